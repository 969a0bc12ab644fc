"""What a ranking request holds, and the one reader that maps it to canonical ids.

Both ways of ranking read requests here: :meth:`Ranker.prepare <gensr.serve.ranker.Ranker.
prepare>` (candidates given: ``rank``, ``POST /v1/rank``) and
:meth:`CatalogueRanker.prepare <gensr.serve.full.CatalogueRanker.prepare>` (the whole
catalogue: ``recommend``, ``search``, ``POST /v1/recommend`` / ``/v1/search``).
:class:`RequestReader` checks each field — the query, the task it implies, the candidates,
the user, the history entries — and turns it into canonical ids, raising a
:class:`~gensr.serve.errors.RequestError` with a one-line message naming the field. Each
caller asks for the fields in its own order, so the first error a request meets is always
the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gensr.data.dataset import SRData
from gensr.data.schema import BEHAVIOUR_CODES
from gensr.errors import GensrError
from gensr.models.base import SRModel
from gensr.serve.errors import (
    OverloadedError,
    RequestError,
    TaskNotServedError,
    UnknownItemError,
    UnknownUserError,
    UserRequiredError,
    shown_ids,
)

__all__ = ["BEHAVIOUR_CODES", "REQUEST_FIELDS", "TASK_WORDS", "HistoryEntry", "Interaction",
           "Limits", "PreparedRequest", "RankRequest", "RequestReader", "positive_int",
           "request_from_mapping"]

REQUEST_FIELDS = ("history", "candidates", "query", "top_k", "user")
TASK_WORDS = {"rec": "recommendation (no query)", "src": "search (with a query)"}


@dataclass(frozen=True)
class Interaction:
    """One past interaction of the user: an item (original id), ``rec`` or ``src``, and for
    ``src`` optionally the query text that led to it."""

    item: str
    behaviour: str = "rec"
    query: str | None = None


#: what a history entry may be: an Interaction, an item id (a rec interaction), a tuple
#: (item, behaviour[, query]) or a mapping with keys item, behaviour, query
HistoryEntry = Interaction | str | Sequence[Any] | Mapping[str, Any]


@dataclass(frozen=True)
class RankRequest:
    """One ranking request: ``history`` oldest first, ``candidates`` to rank, ``query`` for
    search (None = recommendation), ``top_k`` to keep only the best k, ``user`` the original
    user id (needed by models that read user ids, :attr:`SRModel.reads_user_ids`; ignored by
    the others)."""

    history: Sequence[HistoryEntry] = ()
    candidates: Sequence[str] = ()
    query: str | None = None
    top_k: int | None = None
    user: str | None = None


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask for (the service answers 422 beyond them)."""

    max_candidates: int = 1000
    max_query_chars: int = 512
    max_history: int = 10_000  # entries accepted; only the last max_his_len are used
    max_new_queries: int = 100_000  # unseen query texts a model may register over its life


@dataclass
class PreparedRequest:
    """A validated request in canonical ids (the history already truncated)."""

    task: int
    query: str | None
    hist_item: list[int]
    hist_behaviour: list[int]
    hist_query: list[str | None]
    candidates: np.ndarray  # (C,) canonical ids
    candidate_ids: list[str]  # the same, original ids
    top_k: int | None
    user: int = 0  # canonical user id; 0 = none given (models that read users refuse that)


class RequestReader:
    """Checks a request's fields and maps them to the canonical ids of ``data`` for
    ``model`` (the one reader of :class:`~gensr.serve.ranker.Ranker` and
    :class:`~gensr.serve.full.CatalogueRanker`). Raises :class:`RequestError`."""

    def __init__(self, model: SRModel, data: SRData, limits: Limits) -> None:
        self.model = model
        self.data = data
        self.limits = limits
        self.item_index: dict[str, int] = data.item_index
        self._initial_queries = len(model.known_queries)

    # --- the query and the task ----------------------------------------------------------
    def query(self, query: Any, where: str = "query") -> str:
        """A query text (of the request, or ``history[i].query``), checked."""
        if not isinstance(query, str):
            raise RequestError(f"{where} must be a string, got {type(query).__name__}",
                               field=where)
        if not query.strip():
            raise RequestError(f"{where} is empty: leave it out (null) for recommendation",
                               field=where)
        if len(query) > self.limits.max_query_chars:
            raise RequestError(f"{where} too long: {len(query)} > "
                               f"{self.limits.max_query_chars} characters", field=where)
        return query

    def task(self, query: str | None) -> str:
        """``src`` with a query, ``rec`` without; refused when the model does not serve it."""
        task = "src" if query is not None else "rec"
        if task not in self.model.tasks:
            served = " and ".join(TASK_WORDS[t] for t in self.model.tasks)
            raise TaskNotServedError(f"{self.model.name} does not serve {TASK_WORDS[task]}; "
                                     f"it serves {served}", field="query")
        return task

    # --- candidates ----------------------------------------------------------------------
    def candidates(self, candidates: Any) -> np.ndarray:
        """(C,) canonical ids of a list of distinct, known original item ids."""
        lim = self.limits
        if isinstance(candidates, str) or not isinstance(candidates, Sequence):
            raise RequestError("candidates must be a list of item ids", field="candidates")
        if len(candidates) == 0:
            raise RequestError("candidates is empty: give at least one item to rank",
                               field="candidates")
        if len(candidates) > lim.max_candidates:
            raise RequestError(f"too many candidates: {len(candidates)} > {lim.max_candidates} "
                               "(the limit, max_candidates)", field="candidates")
        bad = [c for c in candidates if not isinstance(c, str)]
        if bad:
            raise RequestError(f"candidates must be item id strings, got {bad[0]!r}",
                               field="candidates")
        seen: set[str] = set()
        dups = []
        for c in candidates:
            if c in seen:
                dups.append(c)
            seen.add(c)
        if dups:
            shown = shown_ids(list(dict.fromkeys(dups)))
            raise RequestError(f"candidates repeat item ids: {shown}", field="candidates")
        unknown = [c for c in candidates if c not in self.item_index]
        if unknown:
            raise UnknownItemError("candidates", unknown)
        return np.fromiter((self.item_index[c] for c in candidates), dtype=np.int64,
                           count=len(candidates))

    # --- the user ------------------------------------------------------------------------
    def user(self, user: Any, retriever: Any = None) -> int:
        """The canonical id of the request's user (0: none, or nobody reads it). A user is
        needed by a model that reads user ids, and by a ``retriever`` (full-catalogue
        requests) whose ``user_rule`` is ``required``; a given one must be known when the
        model or the retriever reads user ids (no cold-start fallback)."""
        model = self.model
        if user is not None and not isinstance(user, str):
            raise RequestError(f"user must be an original user id string, got {user!r}",
                               field="user")
        if user is None:
            if model.reads_user_ids:
                raise UserRequiredError(
                    f"{model.name} reads user ids (a learned user vector): give 'user', an "
                    "original user id of its training data", field="user")
            if retriever is not None and retriever.user_rule == "required":
                raise UserRequiredError(
                    f"the {retriever.name} retriever reads user ids: give 'user', an original "
                    "user id of its training data", field="user")
            return 0
        if not (model.reads_user_ids or (retriever is not None and retriever.reads_user_ids)):
            return 0
        uid = self.data.user_index.get(user)
        if uid is None:
            if retriever is None:
                raise UnknownUserError(
                    f"unknown user id {user!r}: {model.name} reads user ids and knows only "
                    "the users of its training data (no cold-start fallback)", field="user")
            who = model.name if model.reads_user_ids else f"the {retriever.name} retriever"
            raise UnknownUserError(
                f"unknown user id {user!r}: {who} reads user ids and knows only the users of "
                "its training data (leave 'user' out to retrieve from the history alone"
                f"{'' if retriever.user_rule == 'optional' else ' — not possible here'})",
                field="user")
        return int(uid)

    # --- the history ---------------------------------------------------------------------
    def history(self, history: Any) -> list[Interaction]:
        """The request's history, checked (a list of known interactions, within the limit)."""
        lim = self.limits
        if isinstance(history, str) or not isinstance(history, Sequence):
            raise RequestError("history must be a list of interactions", field="history")
        if len(history) > lim.max_history:
            raise RequestError(f"history too long: {len(history)} > {lim.max_history} "
                               "interactions (only the last max_his_len are used)",
                               field="history")
        entries = [self.interaction(e, i) for i, e in enumerate(history)]
        unknown = [e.item for e in entries if e.item not in self.item_index]
        if unknown:
            raise UnknownItemError("history", list(dict.fromkeys(unknown)))
        return entries

    def interaction(self, entry: HistoryEntry, index: int) -> Interaction:
        """History entry ``index`` in any accepted form, checked (its item is looked up by
        :meth:`history`)."""
        where = f"history[{index}]"
        if isinstance(entry, Interaction):
            item, behaviour, query = entry.item, entry.behaviour, entry.query
        elif isinstance(entry, str):
            item, behaviour, query = entry, "rec", None
        elif isinstance(entry, Mapping):
            extra = set(entry) - {"item", "behaviour", "query"}
            if "item" not in entry or extra:
                raise RequestError(f"{where} needs keys item, behaviour[, query]"
                                   f"{f'; unknown {sorted(extra)}' if extra else ''}",
                                   field="history")
            item, behaviour, query = (entry["item"], entry.get("behaviour", "rec"),
                                      entry.get("query"))
        elif isinstance(entry, Sequence) and 1 <= len(entry) <= 3:
            item = entry[0]
            behaviour = entry[1] if len(entry) > 1 else "rec"
            query = entry[2] if len(entry) > 2 else None
        else:
            raise RequestError(f"{where} must be (item, behaviour[, query]), got {entry!r}",
                               field="history")
        if not isinstance(item, str):
            raise RequestError(f"{where}: item must be an id string, got {item!r}",
                               field="history")
        if behaviour not in BEHAVIOUR_CODES:
            raise RequestError(f"{where}: behaviour must be 'rec' or 'src', got {behaviour!r}",
                               field="history")
        if query is not None:
            if behaviour == "rec":
                raise RequestError(f"{where}: a rec interaction has no query", field="history")
            query = self.query(query, f"{where}.query")
        return Interaction(item, behaviour, query)

    def history_ids(self, entries: Sequence[Interaction], length: int
                    ) -> tuple[list[int], list[int], list[str | None]]:
        """The last ``length`` entries (none when ``length`` is 0) as canonical item ids,
        behaviour codes and query texts."""
        kept = entries[-length:] if length > 0 else []
        return ([self.item_index[e.item] for e in kept],
                [BEHAVIOUR_CODES[e.behaviour] for e in kept], [e.query for e in kept])

    # --- query ids (at scoring time, under the ranker's lock) -----------------------------
    def model_query_ids(self, query: str | None, hist_query: Sequence[str | None]
                        ) -> tuple[int, list[int]]:
        """The model's query ids of a request's query and history queries. The request's
        query is registered with the model when unseen (models that read query text); history
        queries are looked up only, an unseen one is 0 (no query id: UniSAR, which reads
        history query ids, then treats that interaction as having no query) — registering
        every text users ever typed would grow the model's tables for nothing."""
        known = self.model.known_queries
        hist = [known.get(t, 0) if t is not None else 0 for t in hist_query]
        if query is None:
            return 0, hist
        if query not in known:
            added = len(known) - self._initial_queries
            if added >= self.limits.max_new_queries:
                raise OverloadedError(
                    f"the model already holds {added} unseen query texts (the limit, "
                    f"max_new_queries = {self.limits.max_new_queries}); restart the service "
                    "to free them", field="query")
        try:
            (qid,) = self.model.add_queries([query])
        except GensrError as err:
            raise RequestError(str(err), field="query") from err
        return qid, hist


def positive_int(value: Any, name: str) -> int:
    """``value`` when it is an int >= 1 (not a bool), else a RequestError on ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(f"{name} must be a positive integer, got {value!r}", field=name)
    return int(value)


def request_from_mapping(req: Mapping[str, Any]) -> RankRequest:
    """A :class:`RankRequest` from a JSON-like mapping (the body of ``POST /v1/rank``)."""
    extra = set(req) - set(REQUEST_FIELDS)
    if extra:
        raise RequestError(f"unknown request field(s) {sorted(extra)}; expected "
                           f"{', '.join(REQUEST_FIELDS)}")
    return RankRequest(history=req.get("history") or (), candidates=req.get("candidates", ()),
                       query=req.get("query"), top_k=req.get("top_k"), user=req.get("user"))
