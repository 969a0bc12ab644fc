"""Full-catalogue serving: retrieve N items of the whole catalogue, rerank them, answer top K.

:class:`CatalogueRanker` holds a :class:`~gensr.serve.ranker.Ranker` (its model, data,
request reader and lock) and the retrievers; it is behind ``Ranker.recommend`` /
``Ranker.search`` (the Ranker builds one and hands full-catalogue requests to it),
``gensr rank --full`` and ``POST /v1/recommend`` / ``POST /v1/search``. A request gives the
user's history (oldest first), optionally the user (original id) and, for search, the query;
the retriever for the task (or the one the request names) returns the top ``rerank_n`` items
— never an item of the request's history unless ``keep_consumed`` — and the model reranks
them with :func:`gensr.eval.rerank.rerank_batch`, the rerank step of ``gensr evaluate --full
--retriever``. The answer holds the best ``top_k`` with the model's scores and the time each
stage took.

The retriever reads its own history length (e.g. 50 for SASRec) and the reranker its own
(``max_his_len``), both cut from the same request history; query texts are registered with
each of them as in :meth:`Ranker.rank` (unseen ones at most ``Limits.max_new_queries``).
A request rebuilt from an evaluation instance whose history holds exactly the items masked
in evaluation (the user's train and valid items at test) gets the order that
``gensr evaluate --full --retriever … --save-scores`` stores.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from gensr.data.batching import Batch, pack_batch
from gensr.data.dataset import SRData
from gensr.data.schema import TASK_INDEX, TASKS
from gensr.errors import ConfigError, GensrError
from gensr.models.base import SRModel
from gensr.serve.errors import OverloadedError, RequestError
from gensr.serve.requests import TASK_WORDS, Limits, RequestReader, positive_int
from gensr.serve.results import (
    FullRanking,
    ScoredItem,
    answer_many,
    best_first,
    score_in_groups,
)

__all__ = ["DEFAULT_RERANK_N", "DEFAULT_TOP_K", "FULL_REQUEST_FIELDS", "SMALL_CATALOGUE",
           "CatalogueRanker", "FullRanking", "FullRequest", "NoRetrieverError",
           "PreparedFullRequest", "full_request_from_mapping", "intra_op_threads"]

FULL_REQUEST_FIELDS = ("history", "user", "query", "top_k", "rerank_n", "retriever",
                       "keep_consumed")
DEFAULT_TOP_K = 10
DEFAULT_RERANK_N = 100
# Catalogues up to this size are retrieved with one intra-op thread on CPU (retrieve_threads
# "auto"): the service scores in a worker thread, where two intra-op threads made a SASRec
# query ~4x slower (~1.4 vs 0.3 ms) on the 2-core development machine, and one dense pass
# over 100k items is still a few ms on one core.
SMALL_CATALOGUE = 100_000


def checked_fuse(fuse: Any) -> float | dict[str, float] | None:
    """``fuse`` of :class:`CatalogueRanker`: None, one weight, or retriever name -> weight;
    every weight finite and >= 0 (:func:`gensr.eval.runner.parse_fuse`'s rule)."""
    from gensr.eval.runner import parse_fuse

    def weight(value: Any) -> float:
        parsed = parse_fuse(value) if not isinstance(value, bool) else None
        if not isinstance(parsed, float):
            raise ConfigError(f"--fuse takes a weight >= 0 here, got {value!r} (auto is "
                              "for gensr evaluate)")
        return parsed

    if fuse is None:
        return None
    if isinstance(fuse, Mapping):
        return {str(name): weight(w) for name, w in fuse.items()}
    return weight(fuse)


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


class HeldRanker(Protocol):
    """What :class:`CatalogueRanker` uses of the :class:`~gensr.serve.ranker.Ranker` it
    holds."""

    model: SRModel
    data: SRData
    limits: Limits
    reader: RequestReader
    run_dir: Path | None
    batch_size: int
    lock: threading.RLock

    @property
    def max_his_len(self) -> int:
        """How many of a history's most recent interactions the model reads."""


class CatalogueRanker:
    """Full-catalogue ranking with a held ranker's model: retrieve, rerank, answer the best
    ``top_k`` (see the module docstring). Scoring takes the ranker's lock."""

    def __init__(self, ranker: HeldRanker, retrievers: Any = None,
                 rerank_n: int = DEFAULT_RERANK_N, index: str = "exact",
                 retrieve_threads: int | str | None = "auto",
                 fuse: float | Mapping[str, float] | None = None) -> None:
        """``retrievers``: retriever specs (see :mod:`gensr.retrieve.specs`), built
        retrievers or a ``RetrieverSet`` (None: the defaults, built on first use);
        ``rerank_n`` the items a request retrieves unless it says; ``index`` ``exact`` or
        ``hnsw`` for dense retrievers; ``retrieve_threads`` torch's intra-op threads for the
        retrieval stage on CPU (``"auto"``: 1 for catalogues up to :data:`SMALL_CATALOGUE`
        items, else the process's; None: the process's); ``fuse``: rank by the fused score
        :func:`gensr.eval.rerank.fuse_scores` with this weight of the retriever's score
        (one weight for every retriever, or retriever name -> weight; None: the model's
        scores alone), as ``gensr evaluate --full --retriever … --fuse W`` does."""
        from gensr.retrieve import RetrieverSet

        self.ranker = ranker
        self.rerank_n = int(rerank_n)
        self.fuse = checked_fuse(fuse)
        self.index_kind = index
        if retrieve_threads == "auto":
            retrieve_threads = 1 if ranker.data.n_items <= SMALL_CATALOGUE else None
        elif retrieve_threads is not None and (isinstance(retrieve_threads, bool) or not
                                               isinstance(retrieve_threads, int)
                                               or retrieve_threads < 1):
            raise ValueError(f"retrieve_threads must be 'auto', None or an int >= 1, got "
                             f"{retrieve_threads!r}")
        self.retrieve_threads: int | None = retrieve_threads
        self._registered_texts: set[str] = set()
        self._retriever_specs: Sequence[str] | None
        self._retriever_set: Any
        if isinstance(retrievers, RetrieverSet):
            self._retriever_specs, self._retriever_set = None, retrievers
        elif retrievers is not None and not isinstance(retrievers, (str, bytes)) and all(
                not isinstance(r, str) for r in retrievers):
            self._retriever_specs, self._retriever_set = None, RetrieverSet(list(retrievers))
        else:
            specs = [retrievers] if isinstance(retrievers, str) else retrievers
            self._retriever_specs, self._retriever_set = specs, None
        if self._retriever_set is not None:
            self._check_fuse_names(self._retriever_set)

    @property
    def retrievers(self) -> Any:
        """The :class:`~gensr.retrieve.RetrieverSet` (built on first use from the specs given
        to the constructor, or the defaults: ``lightgcn`` from the run's CF table for
        recommendation, ``bm25`` for search)."""
        if self._retriever_set is None:
            from gensr.retrieve import RetrieverSet, build_retriever, default_specs

            ranker = self.ranker
            with ranker.lock:
                if self._retriever_set is None:
                    specs = self._retriever_specs
                    if specs is None:
                        specs = default_specs(ranker.model.tasks, ranker.run_dir)
                    built = [build_retriever(s, ranker.data, run_dir=ranker.run_dir,
                                             device=ranker.model.device,
                                             index=self.index_kind) for s in specs]
                    retriever_set = RetrieverSet(built)
                    self._check_fuse_names(retriever_set)
                    self._retriever_set = retriever_set
        return self._retriever_set

    def _check_fuse_names(self, retrievers: Any) -> None:
        """A fusion weight for a retriever the ranker does not have is an error, not a
        weight silently never used."""
        if isinstance(self.fuse, Mapping):
            names = retrievers.names()
            unknown = sorted(set(self.fuse) - set(names))
            if unknown:
                raise ConfigError(f"--fuse names {', '.join(map(repr, unknown))}, which "
                                  f"is not a retriever here (retrievers: {', '.join(names)})")

    def card(self) -> dict[str, Any]:
        """The retrievers, ``rerank_n`` and ``retrieve_threads`` for the model card (empty
        while the retrievers are not built)."""
        if self._retriever_set is None:
            return {}
        return {"retrievers": self._retriever_set.describe(), "rerank_n": self.rerank_n,
                "retrieve_threads": self.retrieve_threads,
                **({"fuse": self.fuse} if self.fuse is not None else {})}

    def fusion_weight(self, retriever_name: str) -> float | None:
        """The weight of the retriever's score in the fused ranking (None: not fused)."""
        if self.fuse is None or isinstance(self.fuse, (int, float)):
            return None if self.fuse is None else float(self.fuse)
        weight = self.fuse.get(retriever_name)
        return None if weight is None else float(weight)

    # --- the Python API ------------------------------------------------------------------
    def recommend(self, history: Sequence[Any] = (), *, user: str | None = None,
                  top_k: int = DEFAULT_TOP_K, rerank_n: int | None = None,
                  retriever: str | None = None, keep_consumed: bool = False) -> FullRanking:
        """The best ``top_k`` items of the whole catalogue for a user with ``history``
        (oldest first): ``rerank_n`` retrieved, reranked by the model. Raises
        :class:`RequestError`."""
        return _one(self.rank_many([FullRequest(history, user, None, top_k, rerank_n,
                                                retriever, keep_consumed)]))

    def search(self, query: str, history: Sequence[Any] = (), *, user: str | None = None,
               top_k: int = DEFAULT_TOP_K, rerank_n: int | None = None,
               retriever: str | None = None, keep_consumed: bool = False) -> FullRanking:
        """Like :meth:`recommend`, for the search ``query``."""
        if query is None:
            raise RequestError("search needs a query", field="query")
        return _one(self.rank_many([FullRequest(history, user, query, top_k, rerank_n,
                                                retriever, keep_consumed)]))

    def rank_many(self, requests: Sequence[FullRequest | Mapping[str, Any]], *,
                  return_errors: bool = False) -> list[FullRanking | Exception]:
        """Many full-catalogue requests in shared batches (errors as in
        :meth:`Ranker.rank_many <gensr.serve.ranker.Ranker.rank_many>`)."""
        def prepare(req: FullRequest | Mapping[str, Any]) -> PreparedFullRequest:
            return self.prepare(full_request_from_mapping(req) if isinstance(req, Mapping)
                                else req)

        return answer_many(requests, prepare, self.rank_prepared, return_errors=return_errors)

    # --- validation ----------------------------------------------------------------------
    def prepare(self, request: FullRequest) -> PreparedFullRequest:
        """Check a full-catalogue request and map it to canonical ids (raises
        :class:`RequestError`)."""
        reader = self.ranker.reader
        query = None if request.query is None else reader.query(request.query)
        task = reader.task(query)
        top_k = positive_int(request.top_k, "top_k")
        rerank_n = self.rerank_n if request.rerank_n is None else positive_int(
            request.rerank_n, "rerank_n")
        limit = self.ranker.limits.max_candidates
        if rerank_n > limit:
            raise RequestError(f"rerank_n too large: {rerank_n} > {limit} (the limit, "
                               "max_candidates)", field="rerank_n")
        # top_k > rerank_n is no error: only the retrieved items are ranked, all are returned
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
        entries = reader.history(request.history)
        user = reader.user(request.user, retriever)
        problem = retriever.problem(user, len(entries))
        if problem:
            raise RequestError(problem, field="history")
        length = max(self.ranker.max_his_len, int(retriever.max_his_len))
        items, behaviours, queries = reader.history_ids(entries, length)
        index = reader.item_index
        consumed = (np.zeros(0, np.int64) if request.keep_consumed else
                    np.unique(np.fromiter((index[e.item] for e in entries), dtype=np.int64,
                                          count=len(entries))))
        return PreparedFullRequest(
            task=TASK_INDEX[task], query=query, hist_item=items, hist_behaviour=behaviours,
            hist_query=queries, consumed=consumed, user=user, top_k=top_k,
            rerank_n=rerank_n, retriever=retriever)

    # --- scoring -------------------------------------------------------------------------
    def rank_prepared(self, prepared: Sequence[PreparedFullRequest]
                      ) -> list[FullRanking | Exception]:
        """Score prepared requests in batches of one retriever, task and ``rerank_n`` (at
        most the ranker's ``batch_size`` each), under the ranker's lock: each one's
        FullRanking or error, in order."""
        with self.ranker.lock:
            return score_in_groups(prepared, lambda p: (id(p.retriever), p.task, p.rerank_n),
                                   self.ranker.batch_size, self._score)

    def _query_ids(self, prepared: Sequence[PreparedFullRequest], retriever: Any
                   ) -> tuple[list[int], list[int], list[list[int]], list[list[int]]]:
        """(reranker query ids, retriever query ids, and each one's history query ids)."""
        reader = self.ranker.reader
        model_q, model_h, ret_q, ret_h = [], [], [], []
        limit = self.ranker.limits.max_new_queries
        for p in prepared:
            qid, hist = reader.model_query_ids(p.query, p.hist_query)
            model_q.append(qid)
            model_h.append(hist)
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
                (rid,) = retriever.add_queries([p.query])
            except GensrError as err:
                raise RequestError(str(err), field="query") from err
            ret_q.append(rid)
        return model_q, ret_q, model_h, ret_h

    def _score(self, prepared: Sequence[PreparedFullRequest]) -> list[FullRanking]:
        from gensr.eval.rerank import fuse_scores, rerank_batch
        from gensr.retrieve import Exclusion

        model = self.ranker.model
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
            t1 = time.perf_counter()
            mbatch = _batch(prepared, model_q, model_h, self.ranker.max_his_len)
            reranked = rerank_batch(model, mbatch.to(model.device), got)
            weight = self.fusion_weight(retriever.name)
            if weight is not None:  # the retriever's score fused in (evaluate's --fuse)
                width = reranked.shape[1]
                reranked = fuse_scores(reranked, got.scores[:, :width].to(reranked.device),
                                       weight)
            scores = reranked.cpu().numpy()
        ids = items[:, :scores.shape[1]].numpy()
        ranked = []
        for row, p in enumerate(prepared):
            ok = ids[row] > 0
            s, c = scores[row][ok], ids[row][ok]
            ranked.append((p, c, s, best_first(s, p.top_k, model.name)))
        t2 = time.perf_counter()
        timings = {"retrieve": round((t1 - t0) * 1000, 3), "rerank": round((t2 - t1) * 1000, 3)}
        orig = self.ranker.data.item_orig_id
        return [FullRanking(task=TASKS[p.task],
                            items=[ScoredItem(orig[c[j]], float(s[j])) for j in order],
                            n_candidates=int(len(c)), retriever=retriever.name,
                            timings_ms={**timings, "batch": len(prepared)})
                for p, c, s, order in ranked]


def _one(results: list[FullRanking | Exception]) -> FullRanking:
    """The answer of a single request (``rank_many`` raised its error already)."""
    (result,) = results
    if isinstance(result, Exception):
        raise result
    return result


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
           hist_queries: list[list[int]], length: int) -> Batch:
    """One Batch of the requests' last ``length`` interactions, left-padded, with no
    candidates yet (:func:`gensr.data.batching.pack_batch`)."""
    return pack_batch(user=[p.user for p in prepared], task=[p.task for p in prepared],
                      query=queries, hist_item=[p.hist_item for p in prepared],
                      hist_behaviour=[p.hist_behaviour for p in prepared],
                      hist_query=hist_queries, length=length)


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
