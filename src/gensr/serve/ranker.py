"""The inference API: rank candidate items for a user's history, with or without a query.

A request names everything in the data's *original* ids (``orig_id`` strings): the user's
history as (item, behaviour[, query]) interactions, oldest first, the candidates, and for
search the query text. :class:`Ranker` turns requests into one :class:`~gensr.data.Batch`
(history truncated to the model's ``max_his_len`` and left-padded; the optional ``user``, an
original user id, mapped to its canonical id), scores them with the model's ``score`` and
returns each request's candidates best first.

One request is one instance with C candidates, so a model that encodes the history once per
instance (GenSR does) reuses it across all C candidates. :meth:`Ranker.rank_many` scores many
requests in shared batches; the HTTP service (:mod:`gensr.serve.app`) batches concurrent
requests the same way.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gensr.data.batching import TASK_INDEX, Batch
from gensr.data.dataset import SRData
from gensr.errors import GensrError, RunError
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
from gensr.serve.full import (
    DEFAULT_RERANK_N,
    FullCatalogue,
    FullRanking,
    PreparedFullRequest,
)

REQUEST_FIELDS = ("history", "candidates", "query", "top_k", "user")
BEHAVIOURS = {"rec": 1, "src": 2}  # the Batch's hist_behaviour codes
TASK_NAMES = {v: k for k, v in TASK_INDEX.items()}
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
class ScoredItem:
    """A candidate and its score (higher = better)."""

    item: str
    score: float


@dataclass
class Ranking:
    """The answer to one request: candidates best first (ties keep the request's order)."""

    task: str
    items: list[ScoredItem]
    n_candidates: int

    def __iter__(self) -> Iterator[ScoredItem]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> ScoredItem:
        return self.items[index]

    @property
    def item_ids(self) -> list[str]:
        return [s.item for s in self.items]

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "n_candidates": self.n_candidates,
                "ranking": [{"item": s.item, "score": s.score} for s in self.items]}


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


@dataclass
class _Resolved:
    prepared: PreparedRequest
    query: int
    hist_query: list[int] = field(default_factory=list)


class Ranker(FullCatalogue):
    """Ranks candidates with a loaded model (``rank``), or the whole catalogue through a
    retriever (``recommend``, ``search``: :mod:`gensr.serve.full`). Thread-safe: scoring is
    serialised by a lock."""

    def __init__(self, model: SRModel, data: SRData, *, limits: Limits | None = None,
                 run_dir: str | Path | None = None, batch_size: int = 64,
                 precision: str = "auto", fast_path: bool = True,
                 retrievers: Any = None, rerank_n: int = DEFAULT_RERANK_N,
                 index: str = "exact", retrieve_threads: int | str | None = "auto") -> None:
        """``precision``/``fast_path``: how GenSR scores (auto: bf16 and the fast path on
        CUDA, fp32 and the original path on CPU; see :func:`gensr.runs.prepare_inference`).
        ``retrievers``: retriever specs (``["lightgcn", "bm25"]``, see
        :mod:`gensr.retrieve.specs`), built retrievers or a ``RetrieverSet`` for the
        full-catalogue methods (None: the defaults, built on first use); ``rerank_n`` the
        items a full-catalogue request retrieves unless it says; ``index`` ``exact`` or
        ``hnsw`` for dense retrievers; ``retrieve_threads`` torch's intra-op threads for the
        retrieval stage on CPU (``"auto"``: 1 for catalogues up to
        :data:`~gensr.serve.full.SMALL_CATALOGUE` items, else the process's; None: the
        process's)."""
        from gensr.runs import prepare_inference

        if model.data_fingerprint != data.fingerprint:
            raise RunError(f"the model was trained on data {model.data_fingerprint}, "
                           f"not {data.fingerprint}: item ids would not match")
        self.model = model.eval()
        self.precision = prepare_inference(model, precision, fast_path)
        self.fast_path = bool(fast_path)
        self.data = data
        self.limits = limits or Limits()
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.batch_size = int(batch_size)
        self.item_index: dict[str, int] = data.item_index
        self._initial_queries = len(model.known_queries)
        self._lock = threading.RLock()
        self._init_full(retrievers, rerank_n, index, retrieve_threads)

    @classmethod
    def from_run(cls, run_dir: str | Path, *, data: SRData | str | Path | None = None,
                 device: str | torch.device | None = None, limits: Limits | None = None,
                 batch_size: int = 64, precision: str = "auto",
                 fast_path: bool = True, retrievers: Any = None,
                 rerank_n: int = DEFAULT_RERANK_N, index: str = "exact",
                 retrieve_threads: int | str | None = "auto") -> Ranker:
        """Load ``RUN_DIR``'s model (GenSR or any baseline) and its data (``run.json``)."""
        from gensr.runs import load_run

        model, dataset = load_run(run_dir, data, device)
        return cls(model, dataset, limits=limits, run_dir=run_dir, batch_size=batch_size,
                   precision=precision, fast_path=fast_path, retrievers=retrievers,
                   rerank_n=rerank_n, index=index, retrieve_threads=retrieve_threads)

    # --- facts --------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.model.name

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.model.tasks)

    @property
    def max_his_len(self) -> int:
        return int(self.model.config.max_his_len)

    def example_items(self, n: int = 3) -> list[str]:
        """A few original item ids of the catalogue (for documentation and examples)."""
        return self.data.item_orig_id[1 : n + 1]

    def model_card(self) -> dict[str, Any]:
        """Model name, tasks, data fingerprint, backbone, config, limits and saved metrics."""
        config = dataclasses.asdict(self.model.config)
        metrics: dict[str, Any] = {}
        if self.run_dir is not None:
            for path in sorted(self.run_dir.glob("metrics_*.json")):
                try:
                    metrics[path.stem.removeprefix("metrics_")] = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
        from gensr import __version__

        return {
            "model": self.model.name,
            "tasks": list(self.model.tasks),
            "backbone": config.get("backbone"),
            "data": {"name": self.data.name, "fingerprint": self.data.fingerprint,
                     "n_items": self.data.n_items, "n_queries": self.data.n_queries},
            "max_his_len": self.max_his_len,
            "precision": self.precision,
            "fast_path": self.fast_path,
            "limits": dataclasses.asdict(self.limits),
            "config": config,
            "metrics": metrics,
            "gensr_version": __version__,
            **({"retrievers": self._retriever_set.describe(), "rerank_n": self.rerank_n,
                "retrieve_threads": self.retrieve_threads}
               if self._retriever_set is not None else {}),
        }

    # --- validation -----------------------------------------------------------------------
    def prepare(self, request: RankRequest) -> PreparedRequest:
        """Check a request and map it to canonical ids; raises :class:`RequestError`."""
        lim = self.limits
        query = request.query
        if query is not None:
            query = self._check_query(query, "query")
        task = "src" if query is not None else "rec"
        if task not in self.model.tasks:
            served = " and ".join(TASK_WORDS[t] for t in self.model.tasks)
            raise TaskNotServedError(f"{self.model.name} does not serve {TASK_WORDS[task]}; "
                                     f"it serves {served}", field="query")

        candidates = request.candidates
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
        dups = [c for c in candidates if c in seen or seen.add(c)]  # type: ignore[func-returns-value]
        if dups:
            shown = shown_ids(list(dict.fromkeys(dups)))
            raise RequestError(f"candidates repeat item ids: {shown}", field="candidates")
        unknown = [c for c in candidates if c not in self.item_index]
        if unknown:
            raise UnknownItemError("candidates", unknown)
        cand = np.fromiter((self.item_index[c] for c in candidates), dtype=np.int64,
                           count=len(candidates))

        top_k = request.top_k
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                                  or top_k < 1):
            raise RequestError(f"top_k must be a positive integer, got {top_k!r}",
                               field="top_k")

        user = self._user(request.user)
        entries = self._history(request.history)
        kept = entries[-self.max_his_len:] if self.max_his_len > 0 else []
        return PreparedRequest(
            task=TASK_INDEX[task], query=query,
            hist_item=[self.item_index[e.item] for e in kept],
            hist_behaviour=[BEHAVIOURS[e.behaviour] for e in kept],
            hist_query=[e.query for e in kept],
            candidates=cand, candidate_ids=list(candidates), top_k=top_k, user=user,
        )

    def _history(self, history: Any) -> list[Interaction]:
        """The request's history, checked (a list of known interactions, within the limit)."""
        lim = self.limits
        if isinstance(history, str) or not isinstance(history, Sequence):
            raise RequestError("history must be a list of interactions", field="history")
        if len(history) > lim.max_history:
            raise RequestError(f"history too long: {len(history)} > {lim.max_history} "
                               "interactions (only the last max_his_len are used)",
                               field="history")
        entries = [self._interaction(e, i) for i, e in enumerate(history)]
        unknown = [e.item for e in entries if e.item not in self.item_index]
        if unknown:
            raise UnknownItemError("history", list(dict.fromkeys(unknown)))
        return entries

    def _user(self, user: Any) -> int:
        """The canonical id of the request's user. Models that read user ids need a known
        one; the others ignore it (0)."""
        if user is not None and not isinstance(user, str):
            raise RequestError(f"user must be an original user id string, got {user!r}",
                               field="user")
        if not self.model.reads_user_ids:
            return 0
        if user is None:
            raise UserRequiredError(
                f"{self.model.name} reads user ids (a learned user vector): give 'user', an "
                "original user id of its training data", field="user")
        uid = self.data.user_index.get(user)
        if uid is None:
            raise UnknownUserError(
                f"unknown user id {user!r}: {self.model.name} reads user ids and knows only "
                "the users of its training data (no cold-start fallback)", field="user")
        return int(uid)

    def _check_query(self, query: Any, where: str) -> str:
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

    def _interaction(self, entry: HistoryEntry, index: int) -> Interaction:
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
        if behaviour not in BEHAVIOURS:
            raise RequestError(f"{where}: behaviour must be 'rec' or 'src', got {behaviour!r}",
                               field="history")
        if query is not None:
            if behaviour == "rec":
                raise RequestError(f"{where}: a rec interaction has no query", field="history")
            query = self._check_query(query, f"{where}.query")
        return Interaction(item, behaviour, query)

    # --- ranking --------------------------------------------------------------------------
    def rank(self, history: Sequence[HistoryEntry] = (), candidates: Sequence[str] = (),
             query: str | None = None, top_k: int | None = None,
             user: str | None = None) -> Ranking:
        """Rank ``candidates`` for a user with ``history`` (oldest first), for search if a
        ``query`` is given, else for recommendation; ``user`` (original id) for models that
        read user ids. Raises :class:`RequestError`."""
        return self.rank_many([RankRequest(history, candidates, query, top_k, user)])[0]  # type: ignore[return-value]

    def rank_many(self, requests: Sequence[RankRequest | Mapping[str, Any]], *,
                  return_errors: bool = False) -> list[Ranking | GensrError]:
        """Rank many requests in shared batches. A request that fails does not affect the
        others: with ``return_errors`` its error takes its place in the list, otherwise the
        first error is raised (its message names the request's index)."""
        prepared: list[PreparedRequest | GensrError] = []
        for i, req in enumerate(requests):
            try:
                if isinstance(req, Mapping):
                    req = _request_from_mapping(req)
                prepared.append(self.prepare(req))
            except RequestError as err:
                prepared.append(_with_index(err, i, len(requests)))
        valid = [p for p in prepared if isinstance(p, PreparedRequest)]
        scored = iter(self.rank_prepared(valid)) if valid else iter(())
        out: list[Ranking | GensrError] = []
        for i, p in enumerate(prepared):
            result = next(scored) if isinstance(p, PreparedRequest) else p
            if isinstance(result, RequestError) and isinstance(p, PreparedRequest):
                result = _with_index(result, i, len(requests))
            out.append(result)  # type: ignore[arg-type]
        if not return_errors:
            for result in out:
                if isinstance(result, Exception):
                    raise result
        return out

    def rank_prepared(self, prepared: Sequence[PreparedRequest | PreparedFullRequest]
                      ) -> list[Ranking | FullRanking | Exception]:
        """Score prepared requests in shared batches (grouped by candidate count, at most
        ``batch_size`` each): a Ranking or the error of each, in order. Full-catalogue
        requests (:class:`PreparedFullRequest`) are scored by retrieval and reranking."""
        full = [i for i, p in enumerate(prepared) if isinstance(p, PreparedFullRequest)]
        if full:
            results: list = [None] * len(prepared)
            rest = [i for i in range(len(prepared)) if i not in set(full)]
            with self._lock:
                for i, r in zip(full, self._rank_full([prepared[i] for i in full])):  # type: ignore[misc]
                    results[i] = r
            if rest:
                for i, r in zip(rest, self.rank_prepared([prepared[i] for i in rest])):
                    results[i] = r
            return results
        results = [None] * len(prepared)
        with self._lock:
            resolved: list[tuple[int, _Resolved]] = []
            for i, p in enumerate(prepared):
                try:
                    resolved.append((i, self._resolve_queries(p)))
                except GensrError as err:
                    results[i] = err
            groups: dict[int, list[tuple[int, _Resolved]]] = {}
            for i, r in resolved:
                groups.setdefault(len(r.prepared.candidates), []).append((i, r))
            for members in groups.values():
                for start in range(0, len(members), self.batch_size):
                    chunk = members[start : start + self.batch_size]
                    try:
                        rankings = self._score([r for _, r in chunk])
                    except Exception:  # noqa: BLE001 - retry one by one: isolate the culprit
                        rankings = []
                        for _, r in chunk:
                            try:
                                rankings.extend(self._score([r]))
                            except Exception as err:  # noqa: BLE001
                                rankings.append(err)  # type: ignore[arg-type]
                    for (i, _), ranking in zip(chunk, rankings):
                        results[i] = ranking
        return results  # type: ignore[return-value]

    def _resolve_queries(self, p: PreparedRequest) -> _Resolved:
        """Query ids: the request's query is registered with the model when unseen (models
        that read query text); history queries are looked up only, an unseen one is 0 (no
        query id: UniSAR, which reads history query ids, then treats that interaction as
        having no query) — registering every text users ever typed would grow the model's
        tables for nothing."""
        known = self.model.known_queries
        hist = [known.get(t, 0) if t is not None else 0 for t in p.hist_query]
        if p.query is None:
            return _Resolved(p, 0, hist)
        if p.query not in known:
            added = len(known) - self._initial_queries
            if added >= self.limits.max_new_queries:
                raise OverloadedError(
                    f"the model already holds {added} unseen query texts (the limit, "
                    f"max_new_queries = {self.limits.max_new_queries}); restart the service "
                    "to free them", field="query")
        try:
            (query,) = self.model.add_queries([p.query])
        except GensrError as err:
            raise RequestError(str(err), field="query") from err
        return _Resolved(p, query, hist)

    def build_batch(self, resolved: Sequence[_Resolved]) -> Batch:
        """One Batch for requests with the same number of candidates."""
        b, length = len(resolved), self.max_his_len
        hist = np.zeros((3, b, length), dtype=np.int64)
        for row, r in enumerate(resolved):
            n = len(r.prepared.hist_item)
            if n:
                hist[0, row, length - n:] = r.prepared.hist_item
                hist[1, row, length - n:] = r.prepared.hist_behaviour
                hist[2, row, length - n:] = r.hist_query
        t = torch.from_numpy
        return Batch(
            user=torch.tensor([r.prepared.user for r in resolved], dtype=torch.long),
            task=torch.tensor([r.prepared.task for r in resolved], dtype=torch.long),
            query=torch.tensor([r.query for r in resolved], dtype=torch.long),
            hist_item=t(hist[0]), hist_behaviour=t(hist[1]), hist_query=t(hist[2]),
            candidates=t(np.stack([r.prepared.candidates for r in resolved])),
        )

    @torch.inference_mode()
    def _score(self, resolved: Sequence[_Resolved]) -> list[Ranking]:
        batch = self.build_batch(resolved).to(self.model.device)
        scores = self.model.score(batch).float().cpu().numpy()
        out = []
        for row, r in enumerate(resolved):
            s = scores[row]
            if not np.isfinite(s).all():
                raise RuntimeError(f"{self.model.name} returned non-finite scores")
            order = np.argsort(-s, kind="stable")
            if r.prepared.top_k is not None:
                order = order[: r.prepared.top_k]
            ids = r.prepared.candidate_ids
            out.append(Ranking(task=TASK_NAMES[r.prepared.task],
                               items=[ScoredItem(ids[j], float(s[j])) for j in order],
                               n_candidates=len(ids)))
        return out


def _request_from_mapping(req: Mapping[str, Any]) -> RankRequest:
    extra = set(req) - set(REQUEST_FIELDS)
    if extra:
        raise RequestError(f"unknown request field(s) {sorted(extra)}; expected "
                           f"{', '.join(REQUEST_FIELDS)}")
    return RankRequest(history=req.get("history") or (), candidates=req.get("candidates", ()),
                       query=req.get("query"), top_k=req.get("top_k"), user=req.get("user"))


def _with_index(err: GensrError, index: int, total: int) -> GensrError:
    """Prefix the message with the request's index when there are several."""
    if total > 1 and not str(err).startswith("request "):
        err.args = (f"request {index}: {err}",)
        if isinstance(err, RequestError):
            err.message = str(err)
    return err
