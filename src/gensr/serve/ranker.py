"""The inference API: rank candidate items for a user's history, with or without a query.

A request names everything in the data's *original* ids (``orig_id`` strings): the user's
history as (item, behaviour[, query]) interactions, oldest first, the candidates, and for
search the query text. :class:`Ranker` reads requests with its
:class:`~gensr.serve.requests.RequestReader` (history truncated to the model's
``max_his_len``; the optional ``user``, an original user id, mapped to its canonical id),
packs them into one :class:`~gensr.data.Batch` (:func:`gensr.data.batching.pack_batch`,
left-padded as in evaluation), scores them with the model's ``score`` and returns each
request's candidates best first.

One request is one instance with C candidates, so a model that encodes the history once per
instance (GenSR does) reuses it across all C candidates. :meth:`Ranker.rank_many` scores many
requests in shared batches; the HTTP service (:mod:`gensr.serve.app`) batches concurrent
requests the same way. The whole catalogue (``recommend``, ``search``) is ranked by the
:class:`~gensr.serve.full.CatalogueRanker` the Ranker holds as ``catalogue``.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gensr.data.batching import pack_batch
from gensr.data.dataset import SRData
from gensr.data.schema import TASK_INDEX, TASKS
from gensr.errors import GensrError, RunError
from gensr.models.base import SRModel
from gensr.serve.full import (
    DEFAULT_RERANK_N,
    DEFAULT_TOP_K,
    CatalogueRanker,
    FullRanking,
    FullRequest,
    PreparedFullRequest,
)
from gensr.serve.requests import (
    REQUEST_FIELDS,
    TASK_WORDS,
    HistoryEntry,
    Interaction,
    Limits,
    PreparedRequest,
    RankRequest,
    RequestReader,
    positive_int,
    request_from_mapping,
)
from gensr.serve.results import Ranking, ScoredItem, answer_many, best_first, score_in_groups

__all__ = ["REQUEST_FIELDS", "TASK_WORDS", "HistoryEntry", "Interaction", "Limits",
           "PreparedRequest", "RankRequest", "Ranker", "Ranking", "ScoredItem"]


@dataclass
class _Resolved:
    prepared: PreparedRequest
    query: int
    hist_query: list[int] = field(default_factory=list)


class Ranker:
    """Ranks candidates with a loaded model (``rank``), or the whole catalogue through a
    retriever (``recommend``, ``search``: its ``catalogue``, a
    :class:`~gensr.serve.full.CatalogueRanker`). Thread-safe: scoring is serialised by a
    lock."""

    def __init__(self, model: SRModel, data: SRData, *, limits: Limits | None = None,
                 run_dir: str | Path | None = None, batch_size: int = 64,
                 precision: str = "auto", fast_path: bool = True,
                 retrievers: Any = None, rerank_n: int = DEFAULT_RERANK_N,
                 index: str = "exact", retrieve_threads: int | str | None = "auto",
                 fuse: Any = None) -> None:
        """``precision``/``fast_path``: how GenSR scores (auto: bf16 and the fast path on
        CUDA, fp32 and the original path on CPU; see :func:`gensr.runs.prepare_inference`).
        ``retrievers``: retriever specs (``["lightgcn", "bm25"]``, see
        :mod:`gensr.retrieve.specs`), built retrievers or a ``RetrieverSet`` for the
        full-catalogue methods (None: the defaults, built on first use); ``rerank_n`` the
        items a full-catalogue request retrieves unless it says; ``index`` ``exact`` or
        ``hnsw`` for dense retrievers; ``retrieve_threads`` torch's intra-op threads for the
        retrieval stage on CPU (``"auto"``: 1 for catalogues up to
        :data:`~gensr.serve.full.SMALL_CATALOGUE` items, else the process's; None: the
        process's); ``fuse`` the full-catalogue fusion weight(s) of the retrievers' scores
        (:class:`~gensr.serve.full.CatalogueRanker`)."""
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
        self.reader = RequestReader(self.model, data, self.limits)
        self.item_index: dict[str, int] = self.reader.item_index
        self.lock = threading.RLock()
        self.catalogue = CatalogueRanker(self, retrievers, rerank_n, index, retrieve_threads,
                                         fuse)

    @classmethod
    def from_run(cls, run_dir: str | Path, *, data: SRData | str | Path | None = None,
                 device: str | torch.device | None = None, limits: Limits | None = None,
                 batch_size: int = 64, precision: str = "auto",
                 fast_path: bool = True, retrievers: Any = None,
                 rerank_n: int = DEFAULT_RERANK_N, index: str = "exact",
                 retrieve_threads: int | str | None = "auto", fuse: Any = None) -> Ranker:
        """Load ``RUN_DIR``'s model (GenSR or any baseline) and its data (``run.json``)."""
        from gensr.runs import load_run

        model, dataset = load_run(run_dir, data, device)
        return cls(model, dataset, limits=limits, run_dir=run_dir, batch_size=batch_size,
                   precision=precision, fast_path=fast_path, retrievers=retrievers,
                   rerank_n=rerank_n, index=index, retrieve_threads=retrieve_threads,
                   fuse=fuse)

    # --- facts --------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        """The model's registered name."""
        return self.model.name

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks the model serves (``rec``, ``src``)."""
        return tuple(self.model.tasks)

    @property
    def max_his_len(self) -> int:
        """How many of a history's most recent interactions the model reads
        (:attr:`SRModel.history_window <gensr.models.base.SRModel.history_window>`)."""
        return self.model.history_window

    @property
    def retrievers(self) -> Any:
        """The full-catalogue retrievers (:attr:`CatalogueRanker.retrievers
        <gensr.serve.full.CatalogueRanker.retrievers>`, built on first use)."""
        return self.catalogue.retrievers

    @property
    def rerank_n(self) -> int:
        """Items a full-catalogue request retrieves unless it says."""
        return self.catalogue.rerank_n

    @property
    def retrieve_threads(self) -> int | None:
        """torch's intra-op threads of the retrieval stage on CPU (None: the process's)."""
        return self.catalogue.retrieve_threads

    @property
    def index_kind(self) -> str:
        """``exact`` or ``hnsw``: how dense retrievers search."""
        return self.catalogue.index_kind

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
            **self.catalogue.card(),
        }

    # --- validation -----------------------------------------------------------------------
    def prepare(self, request: RankRequest) -> PreparedRequest:
        """Check a request and map it to canonical ids; raises :class:`RequestError`."""
        reader = self.reader
        query = None if request.query is None else reader.query(request.query)
        task = reader.task(query)
        cand = reader.candidates(request.candidates)
        top_k = request.top_k
        if top_k is not None:
            positive_int(top_k, "top_k")
        user = reader.user(request.user)
        entries = reader.history(request.history)
        items, behaviours, queries = reader.history_ids(entries, self.max_his_len)
        return PreparedRequest(
            task=TASK_INDEX[task], query=query, hist_item=items, hist_behaviour=behaviours,
            hist_query=queries, candidates=cand, candidate_ids=list(request.candidates),
            top_k=top_k, user=user,
        )

    def prepare_full(self, request: FullRequest) -> PreparedFullRequest:
        """Check a full-catalogue request (:meth:`CatalogueRanker.prepare
        <gensr.serve.full.CatalogueRanker.prepare>`)."""
        return self.catalogue.prepare(request)

    # --- ranking --------------------------------------------------------------------------
    def rank(self, history: Sequence[HistoryEntry] = (), candidates: Sequence[str] = (),
             query: str | None = None, top_k: int | None = None,
             user: str | None = None) -> Ranking:
        """Rank ``candidates`` for a user with ``history`` (oldest first), for search if a
        ``query`` is given, else for recommendation; ``user`` (original id) for models that
        read user ids. Raises :class:`RequestError`."""
        (result,) = self.rank_many([RankRequest(history, candidates, query, top_k, user)])
        if isinstance(result, Exception):  # rank_many raised it already
            raise result
        return result

    def rank_many(self, requests: Sequence[RankRequest | Mapping[str, Any]], *,
                  return_errors: bool = False) -> list[Ranking | Exception]:
        """Rank many requests in shared batches. A request that fails does not affect the
        others: with ``return_errors`` its error takes its place in the list, otherwise the
        first error is raised (its message names the request's index)."""
        def prepare(req: RankRequest | Mapping[str, Any]) -> PreparedRequest:
            return self.prepare(request_from_mapping(req) if isinstance(req, Mapping)
                                else req)

        return answer_many(requests, prepare, self.rank_prepared, return_errors=return_errors)

    def recommend(self, history: Sequence[Any] = (), *, user: str | None = None,
                  top_k: int = DEFAULT_TOP_K, rerank_n: int | None = None,
                  retriever: str | None = None, keep_consumed: bool = False) -> FullRanking:
        """The best ``top_k`` items of the whole catalogue for a user with ``history``
        (oldest first): ``rerank_n`` retrieved, reranked by the model
        (:meth:`CatalogueRanker.recommend <gensr.serve.full.CatalogueRanker.recommend>`)."""
        return self.catalogue.recommend(history, user=user, top_k=top_k, rerank_n=rerank_n,
                                        retriever=retriever, keep_consumed=keep_consumed)

    def search(self, query: str, history: Sequence[Any] = (), *, user: str | None = None,
               top_k: int = DEFAULT_TOP_K, rerank_n: int | None = None,
               retriever: str | None = None, keep_consumed: bool = False) -> FullRanking:
        """Like :meth:`recommend`, for the search ``query``."""
        return self.catalogue.search(query, history, user=user, top_k=top_k,
                                     rerank_n=rerank_n, retriever=retriever,
                                     keep_consumed=keep_consumed)

    def rank_full_many(self, requests: Sequence[FullRequest | Mapping[str, Any]], *,
                       return_errors: bool = False) -> list[FullRanking | Exception]:
        """Many full-catalogue requests in shared batches (errors as in :meth:`rank_many`)."""
        return self.catalogue.rank_many(requests, return_errors=return_errors)

    def rank_prepared(self, prepared: Sequence[PreparedRequest | PreparedFullRequest]
                      ) -> list[Ranking | Exception]:
        """Score prepared requests in shared batches (grouped by candidate count, at most
        ``batch_size`` each): a Ranking or the error of each, in order. Full-catalogue
        requests (:class:`PreparedFullRequest`) are scored first, by the ``catalogue``
        (retrieval and reranking: a FullRanking each)."""
        results: dict[int, Ranking | Exception] = {}
        full = [i for i, p in enumerate(prepared) if isinstance(p, PreparedFullRequest)]
        plain = [i for i, p in enumerate(prepared) if isinstance(p, PreparedRequest)]
        if full:
            results.update(zip(full, self.catalogue.rank_prepared(
                [p for p in prepared if isinstance(p, PreparedFullRequest)])))
        if plain:
            results.update(zip(plain, self._rank_candidates(
                [p for p in prepared if isinstance(p, PreparedRequest)])))
        return [results[i] for i in range(len(prepared))]

    def _rank_candidates(self, prepared: Sequence[PreparedRequest]
                         ) -> list[Ranking | Exception]:
        with self.lock:
            results: dict[int, Ranking | Exception] = {}
            resolved: list[tuple[int, _Resolved]] = []
            for i, p in enumerate(prepared):
                try:
                    resolved.append((i, self._resolve_queries(p)))
                except GensrError as err:
                    results[i] = err
            scored = score_in_groups([r for _, r in resolved],
                                     lambda r: len(r.prepared.candidates), self.batch_size,
                                     self._score)
            results.update((i, s) for (i, _), s in zip(resolved, scored))
        return [results[i] for i in range(len(prepared))]

    def _resolve_queries(self, p: PreparedRequest) -> _Resolved:
        """The request's query ids (:meth:`RequestReader.model_query_ids
        <gensr.serve.requests.RequestReader.model_query_ids>`: an unseen request query is
        registered, unseen history queries are 0)."""
        query, hist = self.reader.model_query_ids(p.query, p.hist_query)
        return _Resolved(p, query, hist)

    @torch.inference_mode()
    def _score(self, resolved: Sequence[_Resolved]) -> list[Ranking]:
        batch = pack_batch(
            user=[r.prepared.user for r in resolved], task=[r.prepared.task for r in resolved],
            query=[r.query for r in resolved],
            hist_item=[r.prepared.hist_item for r in resolved],
            hist_behaviour=[r.prepared.hist_behaviour for r in resolved],
            hist_query=[r.hist_query for r in resolved],
            candidates=np.stack([r.prepared.candidates for r in resolved]),
            length=self.max_his_len).to(self.model.device)
        scores = self.model.score(batch).float().cpu().numpy()
        out = []
        for row, r in enumerate(resolved):
            s = scores[row]
            order = best_first(s, r.prepared.top_k, self.model.name)
            ids = r.prepared.candidate_ids
            out.append(Ranking(task=TASKS[r.prepared.task],
                               items=[ScoredItem(ids[j], float(s[j])) for j in order],
                               n_candidates=len(ids)))
        return out
