"""The retrievers: dense (inner product: a CF table, or a model's embeddings), any model that
scores every item, BM25, and the union of several.

* :class:`CFRetriever` (``lightgcn``): user vector · item vectors of a LightGCN table; for a
  request without a user (serving), or always in the ``lightgcn-history`` variant, the mean
  CF vector of the history's items is the query vector.
* :class:`EmbeddingRetriever` (``sasrec=RUN``, ``tem=RUN``): a trained run's
  ``query_embedding(batch) · item_embeddings()`` — exactly its ``score_all``.
* :class:`ScoringRetriever` (``pop``, ``bm25``): a model's ``score_all``; BM25 returns only
  items that match the query (score > 0).
* :class:`UnionRetriever` (``A+B``): each part's top N, fused by reciprocal rank (RRF).
"""

from __future__ import annotations

from pathlib import Path

import torch

from gensr.data.batching import TASK_INDEX, Batch
from gensr.models.base import SRModel
from gensr.retrieve.base import Exclusion, Retrieved, Retriever, merge_top_n, top_n
from gensr.retrieve.index import HNSWIndex, HNSWSettings, load_or_build


class DenseRetriever(Retriever):
    """Inner product of a query vector with every item vector: exact by default, or through
    an approximate HNSW index (its candidates rescored exactly)."""

    kind = "dense"

    def __init__(self, name: str, tasks: tuple[str, ...], known_queries: dict[str, int],
                 max_his_len: int, items: torch.Tensor) -> None:
        super().__init__(name, tasks, known_queries, max_his_len)
        self.items = items.detach().float()
        self.index: HNSWIndex | None = None
        self.index_path: Path | None = None

    def query_vectors(self, batch: Batch) -> torch.Tensor:
        """(B, d) query vectors."""
        raise NotImplementedError

    def use_index(self, kind: str, path: Path | None = None,
                  settings: HNSWSettings | None = None) -> DenseRetriever:
        """``exact`` (no index) or ``hnsw`` (loaded from / saved to ``path``)."""
        if kind == "exact":
            self.index = None
        else:
            self.index = load_or_build(self.items.cpu().numpy(), path, settings)
            self.index_path = path
        return self

    def retrieve(self, batch: Batch, n: int, exclude: Exclusion | None = None) -> Retrieved:
        with torch.no_grad():
            q = self.query_vectors(batch.to(self.items.device)).float()
            if self.index is None:
                scores = q @ self.items.T
                if exclude is not None:
                    exclude.apply(scores)
                return top_n(scores, n)
            extra = exclude.max_per_row(len(batch)) if exclude is not None else 0
            cand = torch.from_numpy(self.index.search(q.cpu().numpy(), n + extra)).to(
                q.device)
            scores = torch.einsum("bd,bkd->bk", q, self.items[cand])
            return merge_top_n(cand, scores, n, exclude)

    def to(self, device: torch.device | str) -> DenseRetriever:
        self.items = self.items.to(device)
        return self

    def describe(self) -> dict:
        return {**super().describe(), "dim": int(self.items.shape[1]),
                "index": "exact" if self.index is None else self.index.kind,
                **({"index_path": str(self.index_path)} if self.index_path else {})}


class CFRetriever(DenseRetriever):
    """LightGCN: the user's CF vector (``mode="user"``; the history's mean item vector when
    the batch has no user, id 0) or always the history's mean (``mode="history"``)."""

    def __init__(self, name: str, item: torch.Tensor, user: torch.Tensor | None,
                 known_queries: dict[str, int], *, mode: str = "user",
                 max_his_len: int = 50, tasks: tuple[str, ...] = ("rec",)) -> None:
        super().__init__(name, tasks, known_queries, max_his_len, item)
        if mode not in ("user", "history"):
            raise ValueError(f"mode must be user or history, not {mode!r}")
        self.mode = mode if user is not None else "history"
        self.user = user.detach().float() if user is not None else None
        self.user_rule = "optional" if self.mode == "user" else "none"

    def query_vectors(self, batch: Batch) -> torch.Tensor:
        hist = batch.hist_item[:, -self.max_his_len:] if self.max_his_len else (
            batch.hist_item[:, :0])
        mask = (hist > 0).unsqueeze(-1).float()
        mean = (self.items[hist] * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        if self.mode == "history" or self.user is None:
            return mean
        known = (batch.user > 0).unsqueeze(-1)
        return torch.where(known, self.user[batch.user.clamp(min=0)], mean)

    def problem(self, user: int, n_history: int) -> str | None:
        if (self.mode == "history" or user <= 0) and n_history == 0:
            return (f"the {self.name} retriever needs a user or a non-empty history "
                    "(its query vector is the user's, or the history's mean item vector)")
        return None

    def to(self, device: torch.device | str) -> CFRetriever:
        super().to(device)
        if self.user is not None:
            self.user = self.user.to(device)
        return self

    def describe(self) -> dict:
        return {**super().describe(), "query": self.mode, "history_length": self.max_his_len}


class EmbeddingRetriever(DenseRetriever):
    """A trained model with ``query_embedding``/``item_embeddings`` (SASRec, TEM, lightgcn):
    the same ranking as its ``score_all``."""

    def __init__(self, name: str, model: SRModel, run_dir: Path | None = None) -> None:
        super().__init__(name, tuple(model.tasks), model.known_queries,
                         model.history_window, model.item_embeddings())
        self.model = model.eval()
        self.run_dir = run_dir
        self.reads_query_text = model.reads_query_text  # type: ignore[misc]
        self.user_rule = "required" if model.reads_user_ids else "none"

    def query_vectors(self, batch: Batch) -> torch.Tensor:
        return self.model.query_embedding(truncate_history(batch.to(self.model.device),
                                                           self.max_his_len))

    def add_queries(self, texts: list[str]) -> list[int]:
        return self.model.add_queries(texts)

    def to(self, device: torch.device | str) -> EmbeddingRetriever:
        self.model.to(device)
        self.items = self.model.item_embeddings().detach().float()
        return self

    def describe(self) -> dict:
        return {**super().describe(), "model": self.model.name,
                **({"run": str(self.run_dir)} if self.run_dir else {})}


class ScoringRetriever(Retriever):
    """A model's ``score_all`` (pop, bm25, …): the top N by its scores. With
    ``positive_only`` only items scored above 0 are eligible (BM25: items matching a query
    term)."""

    kind = "scores"

    def __init__(self, name: str, model: SRModel, *, positive_only: bool = False,
                 run_dir: Path | None = None) -> None:
        super().__init__(name, tuple(model.tasks), model.known_queries,
                         model.history_window)
        self.model = model.eval()
        self.positive_only = positive_only
        self.run_dir = run_dir
        self.reads_query_text = model.reads_query_text  # type: ignore[misc]
        self.user_rule = "required" if model.reads_user_ids else "none"

    def retrieve(self, batch: Batch, n: int, exclude: Exclusion | None = None) -> Retrieved:
        with torch.no_grad():
            scores = self.model.score_all(truncate_history(
                batch.to(self.model.device), self.max_his_len)).clone()
        if self.positive_only:
            scores[scores <= 0] = float("-inf")
        if exclude is not None:
            exclude.apply(scores)
        return top_n(scores, n)

    def add_queries(self, texts: list[str]) -> list[int]:
        return self.model.add_queries(texts)

    def to(self, device: torch.device | str) -> ScoringRetriever:
        self.model.to(device)
        return self

    def describe(self) -> dict:
        return {**super().describe(), "model": self.model.name,
                "positive_only": self.positive_only,
                **({"run": str(self.run_dir)} if self.run_dir else {})}


class UnionRetriever(Retriever):
    """Several retrievers' top N, fused by reciprocal rank: score = sum over the parts that
    returned the item of 1 / (k + rank), rank 1-based (Cormack et al. 2009, k = 60). Serves
    the tasks of any part; for an instance, only the parts serving its task take part."""

    kind = "union"

    def __init__(self, name: str, parts: list[Retriever], k: int = 60) -> None:
        tasks = tuple(t for t in TASK_INDEX if any(t in p.tasks for p in parts))
        super().__init__(name, tasks, {}, max(p.max_his_len for p in parts))
        self.parts = parts
        self.k = int(k)
        reads = [p for p in parts if p.reads_user_ids]
        self.user_rule = ("required" if any(p.user_rule == "required" for p in reads)
                          else "optional" if reads else "none")
        self.reads_query_text = any(p.reads_query_text for p in parts)  # type: ignore[misc]

    def add_queries(self, texts: list[str]) -> list[int]:
        """Register ``texts`` with every part. The parts that read query text number unseen
        texts alike (each appends them, in the same order, after the data's queries), so their
        ids agree and serve every part (the others ignore the id)."""
        ids = [p.add_queries(texts) for p in self.parts]
        reading = [i for p, i in zip(self.parts, ids) if p.reads_query_text]
        if any(r != reading[0] for r in reading[1:]):
            raise RuntimeError(f"the parts of {self.name} number query texts differently")
        return reading[0] if reading else ids[0]

    def retrieve(self, batch: Batch, n: int, exclude: Exclusion | None = None) -> Retrieved:
        b = len(batch)
        cands, fused = [], []
        for part in self.parts:
            pb = batch
            serves = torch.tensor([TASK_INDEX[t] for t in part.tasks])
            rows = torch.isin(pb.task.cpu(), serves)
            if not bool(rows.any()):
                continue
            got = part.retrieve(pb, n, exclude)
            rank = torch.arange(1, got.items.shape[1] + 1, device=got.items.device).float()
            score = (1.0 / (self.k + rank)).expand_as(got.scores).clone()
            score[~got.valid | ~rows.to(got.items.device)[:, None]] = float("-inf")
            cands.append(got.items.cpu())
            fused.append(score.cpu())
        if not cands:
            z = torch.zeros((b, n), dtype=torch.long)
            return Retrieved(z, torch.full((b, n), float("-inf")))
        items = torch.cat(cands, 1)
        scores = torch.cat(fused, 1)
        # sum each item's reciprocal ranks over the parts
        order = torch.sort(items, dim=1, stable=True)
        items, scores = order.values, scores.gather(1, order.indices)
        finite = torch.isfinite(scores)
        total = torch.where(finite, scores, torch.zeros_like(scores))
        same = torch.zeros_like(items, dtype=torch.bool)
        same[:, 1:] = items[:, 1:] == items[:, :-1]
        group = (~same).cumsum(1) - 1  # group id of equal items within each row
        sums = torch.zeros_like(total).scatter_add_(1, group, total)
        any_finite = torch.zeros_like(finite, dtype=torch.float).scatter_add_(
            1, group, finite.float()) > 0
        first = ~same
        fused_scores = torch.where(first & any_finite.gather(1, group), sums.gather(1, group),
                                   torch.full_like(total, float("-inf")))
        return merge_top_n(items, fused_scores, n, exclude)

    def problem(self, user: int, n_history: int) -> str | None:
        found = [p.problem(user, n_history) for p in self.parts]
        return next((f for f in found if f), None) if all(found) else None

    def to(self, device: torch.device | str) -> UnionRetriever:
        for p in self.parts:
            p.to(device)
        return self

    def describe(self) -> dict:
        return {**super().describe(), "fusion": f"reciprocal rank, k = {self.k}",
                "parts": [p.describe() for p in self.parts]}


def truncate_history(batch: Batch, length: int) -> Batch:
    """``batch`` with its history cut to the last ``length`` positions (:meth:`Batch.last`;
    the batches of a retrieval may carry a longer history than one retriever reads)."""
    return batch.last(length)
