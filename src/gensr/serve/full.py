"""Full-catalogue serving: retrieve N items of the whole catalogue, rerank them, answer top K.

:class:`FullCatalogue` is the part of :class:`~gensr.serve.ranker.Ranker` behind
``Ranker.recommend`` / ``Ranker.search``, ``gensr rank --full`` and ``POST /v1/recommend`` /
``POST /v1/search``. A request gives the user's history (oldest first), optionally the user
(original id) and, for search, the query; the ranker's retriever for the task (or the one the
request names) returns the top ``rerank_n`` items — never an item of the request's history
unless ``keep_consumed`` — and the model reranks them with its ordinary ``score``. The answer
holds the best ``top_k`` with the model's scores and the time each stage took.

The retriever reads its own history length (e.g. 50 for SASRec) and the reranker its own
(``max_his_len``), both cut from the same request history; query texts are registered with
each of them as in :meth:`Ranker.rank` (unseen ones at most ``Limits.max_new_queries``).
A request rebuilt from an evaluation instance whose history holds exactly the items masked
in evaluation (the user's train and valid items at test) gets the order that
``gensr evaluate --full --retriever … --save-scores`` stores.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gensr.data.batching import TASK_INDEX, Batch
from gensr.errors import GensrError
from gensr.serve.errors import (
    OverloadedError,
    RequestError,
    TaskNotServedError,
    UnknownUserError,
    UserRequiredError,
)

FULL_REQUEST_FIELDS = ("history", "user", "query", "top_k", "rerank_n", "retriever",
                       "keep_consumed")
DEFAULT_TOP_K = 10
DEFAULT_RERANK_N = 100
# Catalogues up to this size are retrieved with one intra-op thread on CPU (retrieve_threads
# "auto"): the service scores in a worker thread, where two intra-op threads made a SASRec
# query ~4x slower (~1.4 vs 0.3 ms) on the 2-core development machine, and one dense pass
# over 100k items is still a few ms on one core.
SMALL_CATALOGUE = 100_000


class NoRetrieverError(RequestError):
    """No retriever serves the request's task, or the named one is not loaded."""

    code = "no_retriever"


@dataclass(frozen=True)
class FullRequest:
    """A full-catalogue request: ``history`` oldest first (any entry form
    :meth:`Ranker.rank` accepts), ``user`` (original id: for models and retrievers that read
    user ids), ``query`` for search (None = recommendation), ``top_k`` items to return,
    ``rerank_n`` items to retrieve for the reranker (None = the ranker's default), the
    ``retriever`` to use (None = the default for the task) and ``keep_consumed`` (True: the
    history's items may be retrieved again)."""

    history: Sequence[Any] = ()
    user: str | None = None
    query: str | None = None
    top_k: int = DEFAULT_TOP_K
    rerank_n: int | None = None
    retriever: str | None = None
    keep_consumed: bool = False


@dataclass
class PreparedFullRequest:
    """A validated full-catalogue request in canonical ids."""

    task: int
    query: str | None
    hist_item: list[int]  # the last max(reranker, retriever) history lengths
    hist_behaviour: list[int]
    hist_query: list[str | None]
    consumed: np.ndarray  # item ids never to retrieve (the whole history, unless kept)
    user: int
    top_k: int
    rerank_n: int
    retriever: Any  # a gensr.retrieve.Retriever


@dataclass
class FullRanking:
    """The answer to a full-catalogue request: the best ``top_k`` of the ``n_candidates``
    retrieved items, reranked (ties keep the retrieval order), and the milliseconds each
    stage took for the batch the request was scored in."""

    task: str
    items: list[Any]  # ScoredItem
    n_candidates: int
    retriever: str
    timings_ms: dict[str, float] = field(default_factory=dict)

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]

    @property
    def item_ids(self) -> list[str]:
        return [s.item for s in self.items]

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "retriever": self.retriever,
                "n_candidates": self.n_candidates,
                "ranking": [{"item": s.item, "score": s.score} for s in self.items],
                "timings_ms": dict(self.timings_ms)}


class FullCatalogue:
    """Mixin of :class:`~gensr.serve.ranker.Ranker`: full-catalogue ranking (see the module
    docstring). Needs the Ranker's ``model``, ``data``, ``limits``, ``_lock``, ``run_dir``
    and its validation helpers."""

    _retriever_specs: Sequence[str] | None
    _retriever_set: Any
    rerank_n: int
    index_kind: str
    retrieve_threads: int | None

    # --- configuration -------------------------------------------------------------------
    def _init_full(self, retrievers: Any = None, rerank_n: int = DEFAULT_RERANK_N,
                   index: str = "exact", retrieve_threads: int | str | None = "auto") -> None:
        from gensr.retrieve import RetrieverSet

        self.rerank_n = int(rerank_n)
        self.index_kind = index
        if retrieve_threads == "auto":
            retrieve_threads = 1 if self.data.n_items <= SMALL_CATALOGUE else None  # type: ignore[attr-defined]
        elif retrieve_threads is not None and (isinstance(retrieve_threads, bool) or not
                                               isinstance(retrieve_threads, int)
                                               or retrieve_threads < 1):
            raise ValueError(f"retrieve_threads must be 'auto', None or an int >= 1, got "
                             f"{retrieve_threads!r}")
        self.retrieve_threads = retrieve_threads
        self._registered_texts: set[str] = set()
        if isinstance(retrievers, RetrieverSet):
            self._retriever_specs, self._retriever_set = None, retrievers
        elif retrievers is not None and not isinstance(retrievers, (str, bytes)) and all(
                not isinstance(r, str) for r in retrievers):
            self._retriever_specs, self._retriever_set = None, RetrieverSet(list(retrievers))
        else:
            specs = [retrievers] if isinstance(retrievers, str) else retrievers
            self._retriever_specs, self._retriever_set = specs, None

    @property
    def retrievers(self):
        """The :class:`~gensr.retrieve.RetrieverSet` (built on first use from the specs given
        to the constructor, or the defaults: ``lightgcn`` from the run's CF table for
        recommendation, ``bm25`` for search)."""
        if self._retriever_set is None:
            from gensr.retrieve import RetrieverSet, build_retriever, default_specs

            with self._lock:  # type: ignore[attr-defined]
                if self._retriever_set is None:
                    specs = self._retriever_specs
                    if specs is None:
                        specs = default_specs(self.model.tasks, self.run_dir)  # type: ignore[attr-defined]
                    built = [build_retriever(s, self.data, run_dir=self.run_dir,  # type: ignore[attr-defined]
                                             device=self.model.device,  # type: ignore[attr-defined]
                                             index=self.index_kind) for s in specs]
                    self._retriever_set = RetrieverSet(built)
        return self._retriever_set

    # --- the Python API ------------------------------------------------------------------
    def recommend(self, history: Sequence[Any] = (), *, user: str | None = None,
                  top_k: int = DEFAULT_TOP_K, rerank_n: int | None = None,
                  retriever: str | None = None, keep_consumed: bool = False) -> FullRanking:
        """The best ``top_k`` items of the whole catalogue for a user with ``history``
        (oldest first): ``rerank_n`` retrieved, reranked by the model. Raises
        :class:`RequestError`."""
        return self.rank_full_many([FullRequest(history, user, None, top_k, rerank_n,
                                                retriever, keep_consumed)])[0]  # type: ignore[return-value]

    def search(self, query: str, history: Sequence[Any] = (), *, user: str | None = None,
               top_k: int = DEFAULT_TOP_K, rerank_n: int | None = None,
               retriever: str | None = None, keep_consumed: bool = False) -> FullRanking:
        """Like :meth:`recommend`, for the search ``query``."""
        if query is None:
            raise RequestError("search needs a query", field="query")
        return self.rank_full_many([FullRequest(history, user, query, top_k, rerank_n,
                                                retriever, keep_consumed)])[0]  # type: ignore[return-value]

    def rank_full_many(self, requests: Sequence[FullRequest | Mapping[str, Any]], *,
                       return_errors: bool = False) -> list[FullRanking | GensrError]:
        """Many full-catalogue requests in shared batches (errors as in
        :meth:`Ranker.rank_many`)."""
        from gensr.serve.ranker import _with_index

        prepared: list[Any] = []
        for i, req in enumerate(requests):
            try:
                if isinstance(req, Mapping):
                    req = full_request_from_mapping(req)
                prepared.append(self.prepare_full(req))
            except RequestError as err:
                prepared.append(_with_index(err, i, len(requests)))
        valid = [p for p in prepared if isinstance(p, PreparedFullRequest)]
        scored = iter(self.rank_prepared(valid)) if valid else iter(())  # type: ignore[attr-defined]
        out: list[Any] = []
        for i, p in enumerate(prepared):
            result = next(scored) if isinstance(p, PreparedFullRequest) else p
            if isinstance(result, RequestError) and isinstance(p, PreparedFullRequest):
                result = _with_index(result, i, len(requests))
            out.append(result)
        if not return_errors:
            for result in out:
                if isinstance(result, Exception):
                    raise result
        return out

    # --- validation ----------------------------------------------------------------------
    def prepare_full(self, request: FullRequest) -> PreparedFullRequest:
        """Check a full-catalogue request and map it to canonical ids (raises
        :class:`RequestError`)."""
        from gensr.serve.ranker import BEHAVIOURS, TASK_WORDS

        model = self.model  # type: ignore[attr-defined]
        query = request.query
        if query is not None:
            query = self._check_query(query, "query")  # type: ignore[attr-defined]
        task = "src" if query is not None else "rec"
        if task not in model.tasks:
            served = " and ".join(TASK_WORDS[t] for t in model.tasks)
            raise TaskNotServedError(f"{model.name} does not serve {TASK_WORDS[task]}; "
                                     f"it serves {served}", field="query")
        top_k = _positive_int(request.top_k, "top_k")
        rerank_n = self.rerank_n if request.rerank_n is None else _positive_int(
            request.rerank_n, "rerank_n")
        limit = self.limits.max_candidates  # type: ignore[attr-defined]
        if rerank_n > limit:
            raise RequestError(f"rerank_n too large: {rerank_n} > {limit} (the limit, "
                               "max_candidates)", field="rerank_n")
        if top_k > rerank_n:
            raise RequestError(f"top_k ({top_k}) exceeds rerank_n ({rerank_n}): only the "
                               "retrieved items are ranked", field="top_k")
        if not isinstance(request.keep_consumed, bool):
            raise RequestError(f"keep_consumed must be true or false, got "
                               f"{request.keep_consumed!r}", field="keep_consumed")
        name = request.retriever
        if name is not None and not isinstance(name, str):
            raise RequestError(f"retriever must be a name, got {name!r}", field="retriever")
        retriever = self.retrievers.get(task, name)
        if retriever is None:
            available = self.retrievers.names(task)
            if name is not None:
                raise NoRetrieverError(
                    f"no retriever {name!r} for {TASK_WORDS[task]}; this service has "
                    f"{', '.join(map(repr, available)) or 'none'}", field="retriever")
            raise NoRetrieverError(
                f"no retriever serves {TASK_WORDS[task]} here: start with --retriever "
                f"{'lightgcn=CF_TABLE or sasrec=RUN_DIR' if task == 'rec' else 'bm25'}",
                field="query" if task == "src" else None)
        entries = self._history(request.history)  # type: ignore[attr-defined]
        user = self._full_user(request.user, retriever)
        problem = retriever.problem(user, len(entries))
        if problem:
            raise RequestError(problem, field="history")
        length = max(int(model.config.max_his_len), int(retriever.max_his_len))
        kept = entries[-length:] if length > 0 else []
        index = self.item_index  # type: ignore[attr-defined]
        consumed = (np.zeros(0, np.int64) if request.keep_consumed else
                    np.unique(np.fromiter((index[e.item] for e in entries), dtype=np.int64,
                                          count=len(entries))))
        return PreparedFullRequest(
            task=TASK_INDEX[task], query=query,
            hist_item=[index[e.item] for e in kept],
            hist_behaviour=[BEHAVIOURS[e.behaviour] for e in kept],
            hist_query=[e.query for e in kept], consumed=consumed, user=user,
            top_k=top_k, rerank_n=rerank_n, retriever=retriever)

    def _full_user(self, user: Any, retriever: Any) -> int:
        """The canonical user id for the reranker and the retriever: a given user must be
        known when either reads user ids; it may be left out only when neither needs it."""
        model = self.model  # type: ignore[attr-defined]
        if user is not None and not isinstance(user, str):
            raise RequestError(f"user must be an original user id string, got {user!r}",
                               field="user")
        reads = model.reads_user_ids or retriever.reads_user_ids
        if user is None:
            if model.reads_user_ids:
                raise UserRequiredError(
                    f"{model.name} reads user ids (a learned user vector): give 'user', an "
                    "original user id of its training data", field="user")
            if retriever.user_rule == "required":
                raise UserRequiredError(
                    f"the {retriever.name} retriever reads user ids: give 'user', an original "
                    "user id of its training data", field="user")
            return 0
        if not reads:
            return 0
        uid = self.data.user_index.get(user)  # type: ignore[attr-defined]
        if uid is None:
            who = model.name if model.reads_user_ids else f"the {retriever.name} retriever"
            raise UnknownUserError(
                f"unknown user id {user!r}: {who} reads user ids and knows only the users of "
                "its training data (leave 'user' out to retrieve from the history alone"
                f"{'' if retriever.user_rule == 'optional' else ' — not possible here'})",
                field="user")
        return int(uid)

    # --- scoring -------------------------------------------------------------------------
    def _rank_full(self, prepared: Sequence[PreparedFullRequest]
                   ) -> list[FullRanking | Exception]:
        """Score prepared full-catalogue requests in batches of one retriever, task and
        ``rerank_n`` (called under the lock by :meth:`Ranker.rank_prepared`)."""
        results: list[Any] = [None] * len(prepared)
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(prepared):
            groups.setdefault((id(p.retriever), p.task, p.rerank_n), []).append(i)
        size = self.batch_size  # type: ignore[attr-defined]
        for members in groups.values():
            for start in range(0, len(members), size):
                chunk = members[start : start + size]
                try:
                    out = self._score_full([prepared[i] for i in chunk])
                except Exception:  # noqa: BLE001 - retry one by one: isolate the culprit
                    out = []
                    for i in chunk:
                        try:
                            out.extend(self._score_full([prepared[i]]))
                        except Exception as err:  # noqa: BLE001
                            out.append(err)
                for i, r in zip(chunk, out):
                    results[i] = r
        return results

    def _query_ids(self, prepared: Sequence[PreparedFullRequest], retriever: Any
                   ) -> tuple[list[int], list[int], list[list[int]], list[list[int]]]:
        """(reranker query ids, retriever query ids, and each one's history query ids)."""
        from gensr.serve.ranker import PreparedRequest

        model_q, model_h, ret_q, ret_h = [], [], [], []
        limit = self.limits.max_new_queries  # type: ignore[attr-defined]
        for p in prepared:
            shim = PreparedRequest(task=p.task, query=p.query, hist_item=p.hist_item,
                                   hist_behaviour=p.hist_behaviour, hist_query=p.hist_query,
                                   candidates=np.zeros(0, np.int64), candidate_ids=[],
                                   top_k=None, user=p.user)
            resolved = self._resolve_queries(shim)  # type: ignore[attr-defined]
            model_q.append(resolved.query)
            model_h.append(resolved.hist_query)
            known = retriever.known_queries
            ret_h.append([known.get(t, 0) if t is not None else 0 for t in p.hist_query])
            if p.query is None:
                ret_q.append(0)
                continue
            if (retriever.reads_query_text and p.query not in known
                    and p.query not in self._registered_texts):
                if len(self._registered_texts) >= limit:
                    raise OverloadedError(
                        f"the retrievers already hold {len(self._registered_texts)} unseen "
                        f"query texts (the limit, max_new_queries = {limit}); restart the "
                        "service to free them", field="query")
                self._registered_texts.add(p.query)
            try:
                (qid,) = retriever.add_queries([p.query])
            except GensrError as err:
                raise RequestError(str(err), field="query") from err
            ret_q.append(qid)
        return model_q, ret_q, model_h, ret_h

    def _score_full(self, prepared: Sequence[PreparedFullRequest]) -> list[FullRanking]:
        from gensr.retrieve import Exclusion
        from gensr.serve.ranker import TASK_NAMES, ScoredItem

        model = self.model  # type: ignore[attr-defined]
        retriever = prepared[0].retriever
        n = prepared[0].rerank_n
        t0 = time.perf_counter()
        threads = self.retrieve_threads if model.device.type == "cpu" else None
        with torch.inference_mode():
            model_q, ret_q, model_h, ret_h = self._query_ids(prepared, retriever)
            rbatch = _batch(prepared, ret_q, ret_h, retriever.max_his_len)
            with intra_op_threads(threads):
                got = retriever.retrieve(rbatch, n, Exclusion.from_lists(
                    [p.consumed for p in prepared]))
            items = got.items.cpu()
            width = max(int((items > 0).sum(1).max()), 1) if len(items) else 1
            cands = items[:, :width]
            t1 = time.perf_counter()
            mbatch = _batch(prepared, model_q, model_h, int(model.config.max_his_len), cands)
            scores = model.score(mbatch.to(model.device)).float().cpu()
            scores = scores.masked_fill(cands <= 0, float("-inf")).numpy()
        orig = self.data.item_orig_id  # type: ignore[attr-defined]
        out = []
        ids = cands.numpy()
        ranked = []
        for row, p in enumerate(prepared):
            ok = ids[row] > 0
            s, c = scores[row][ok], ids[row][ok]
            if not np.isfinite(s).all():
                raise RuntimeError(f"{model.name} returned non-finite scores")
            order = np.argsort(-s, kind="stable")[: p.top_k]
            ranked.append((p, c, s, order))
        t2 = time.perf_counter()
        timings = {"retrieve": round((t1 - t0) * 1000, 3), "rerank": round((t2 - t1) * 1000, 3)}
        for p, c, s, order in ranked:
            out.append(FullRanking(
                task=TASK_NAMES[p.task],
                items=[ScoredItem(orig[c[j]], float(s[j])) for j in order],
                n_candidates=int(len(c)), retriever=retriever.name,
                timings_ms={**timings, "batch": len(prepared)}))
        return out


@contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` inside the block (None: left as it is)."""
    current = torch.get_num_threads()
    if n is None or n == current:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(current)


def _batch(prepared: Sequence[PreparedFullRequest], queries: list[int],
           hist_queries: list[list[int]], length: int,
           candidates: torch.Tensor | None = None) -> Batch:
    """One Batch of the requests' last ``length`` interactions, left-padded (the layout of
    :meth:`gensr.data.batching.InstanceTable.make_batch`)."""
    b = len(prepared)
    hist = np.zeros((3, b, length), dtype=np.int64)
    for row, (p, hq) in enumerate(zip(prepared, hist_queries)):
        k = min(len(p.hist_item), length)
        if k:
            hist[0, row, length - k:] = p.hist_item[-k:]
            hist[1, row, length - k:] = p.hist_behaviour[-k:]
            hist[2, row, length - k:] = hq[-k:]
    t = torch.from_numpy
    return Batch(
        user=torch.tensor([p.user for p in prepared], dtype=torch.long),
        task=torch.tensor([p.task for p in prepared], dtype=torch.long),
        query=torch.tensor(queries, dtype=torch.long),
        hist_item=t(hist[0]), hist_behaviour=t(hist[1]), hist_query=t(hist[2]),
        candidates=(candidates if candidates is not None
                    else torch.zeros((b, 1), dtype=torch.long)),
    )


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(f"{name} must be a positive integer, got {value!r}", field=name)
    return int(value)


def full_request_from_mapping(req: Mapping[str, Any], *, task: str | None = None
                              ) -> FullRequest:
    """A :class:`FullRequest` from a JSON-like mapping (the body of ``POST /v1/recommend``
    or ``/v1/search``); ``task`` "rec" refuses a query, "src" requires one."""
    extra = set(req) - set(FULL_REQUEST_FIELDS)
    if extra:
        raise RequestError(f"unknown request field(s) {sorted(extra)}; expected "
                           f"{', '.join(FULL_REQUEST_FIELDS)}")
    query = req.get("query")
    if task == "rec" and query is not None:
        raise RequestError("a recommendation request has no query (use /v1/search)",
                           field="query")
    if task == "src" and query is None:
        raise RequestError("a search request needs a query", field="query")
    top_k = req.get("top_k")
    return FullRequest(history=req.get("history") or (), user=req.get("user"), query=query,
                       top_k=DEFAULT_TOP_K if top_k is None else top_k,
                       rerank_n=req.get("rerank_n"), retriever=req.get("retriever"),
                       keep_consumed=req.get("keep_consumed", False))  # checked by prepare
