"""Full-catalogue evaluation through a retriever: retrieve N, let any model rerank them.

For each evaluation instance the retriever returns the top N items of the whole catalogue,
never any item the user interacted with in the splits before the evaluated one (valid:
train; test: train and valid), except the instance's target (the rule of
:func:`gensr.eval.protocol.evaluate_full`). The reranker scores those N with its ordinary
``score(batch)``; items outside the N rank below all of them. So a target the retriever
missed counts 0 at every K <= N, and the retriever's Recall@N is the rerank's ceiling.
The retriever's own order (its scores) is reported beside it, from the same retrieval.

Ties across the cut follow full ranking's rule (:mod:`gensr.eval.metrics`, ``expected``):
when the N-th score is shared with items that did not fit, every item of that tie is equally
likely to be among the N. The retriever's row then equals full ranking by its scores at every
K <= N, and a reranked target tied at the cut counts with the chance that it was retrieved
(:func:`rerank_candidates`), never by its item id.

Nothing here knows a model or a retriever beyond their interfaces (``score`` and
``retrieve``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch

from gensr.data.batching import TASK_INDEX, Batch, InstanceTable
from gensr.data.dataset import SRData
from gensr.eval.metrics import KS, bound_metrics, rank_metrics
from gensr.eval.protocol import Metrics, full_instances, masked_pairs, seen_before
from gensr.models.base import SRModel
from gensr.progress import progress as progress_bar
from gensr.retrieve.base import Exclusion, Retrieved, Retriever


def rerank_ks(n: int, ks: tuple[int, ...] = KS) -> tuple[int, ...]:
    """The cut-offs reported with N retrieved: those of ``ks`` up to N, then N itself."""
    return tuple(k for k in ks if k < n) + (n,)


@dataclass
class RerankResult:
    """Metrics per task of the retriever alone and of the reranker over its N (None without
    a reranker), with the seconds each stage took over the whole split; ``fused``: the
    metrics of the fused score (:func:`fuse_scores`) for each weight asked for."""

    retriever: Metrics
    rerank: Metrics | None
    n: int
    instances: int
    seconds: dict[str, float] = field(default_factory=dict)
    fused: dict[float, Metrics] = field(default_factory=dict)
    # who ("retriever", "rerank", "fused:W") -> task -> metric -> per-instance values, in the
    # order of the instances (the input of seed-aware tests over several runs)
    per_instance: dict[str, dict[str, dict[str, np.ndarray]]] = field(default_factory=dict)


#: the fusion weights tried on validation (gensr evaluate --fuse auto)
FUSION_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


def _standardise(x: torch.Tensor) -> torch.Tensor:
    """Each row's finite entries as z-scores (mean 0, sd 1; sd floored at 1e-6); -inf stays."""
    x = x.double()
    finite = torch.isfinite(x)
    count = finite.sum(1, keepdim=True).clamp(min=1)
    zeroed = torch.where(finite, x, torch.zeros_like(x))
    mean = zeroed.sum(1, keepdim=True) / count
    var = (torch.where(finite, x - mean, torch.zeros_like(x)) ** 2).sum(1, keepdim=True) / count
    z = (x - mean) / var.sqrt().clamp(min=1e-6)
    return torch.where(finite, z, torch.full_like(x, float("-inf")))


def fuse_scores(rerank: torch.Tensor, retrieval: torch.Tensor, weight: float) -> torch.Tensor:
    """The reranker's and the retriever's scores of the same (B, N) items, fused as in
    BM25 + monoT5 pipelines: z(rerank) + weight · z(retrieval), each standardised over the
    row's items (so the two scales meet); ``-inf`` where either is (padding). Weight 0 = the
    reranker alone (its order, on another scale)."""
    fused = _standardise(rerank) + float(weight) * _standardise(retrieval)
    return torch.nan_to_num(fused, nan=float("-inf")).float()


def choose_fusion_weight(result: RerankResult, metric: str = "N@10") -> float:
    """The weight of ``result.fused`` (a validation run) with the best mean ``metric`` over
    its tasks; ties: the smaller weight."""
    if not result.fused:
        raise ValueError("the result holds no fused metrics (evaluate_rerank(fuse=...))")
    def score(w: float) -> float:
        rows = result.fused[w]
        return float(np.mean([rows[t][metric] for t in rows]))
    return max(sorted(result.fused), key=lambda w: (score(w), -w))


def _metrics(scores: torch.Tensor, items: torch.Tensor, target: torch.Tensor,
             ks: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Per-instance metrics of a (B, N) ranking of ``items`` (0 = padding) by ``scores``,
    for ``target`` items; a target not among the items ranks below all N (0 at every K)."""
    scores = scores.float().masked_fill(items <= 0, float("-inf"))
    found = items == target[:, None]
    present = found.any(1)
    pos = found.float().argmax(1)
    metrics = rank_metrics(scores, pos, ks=ks)
    return {k: torch.where(present, v, torch.zeros_like(v)) for k, v in metrics.items()}


@dataclass
class CutTies:
    """How each row's cut at N met a tie: the N-th score ``kth``, the retrieved items that
    share it (``tied_in``), the items left out at it (``tied_out``), and whether the
    target is among those left out (``target_out``). (B,) tensors."""

    kth: torch.Tensor
    tied_in: torch.Tensor
    tied_out: torch.Tensor
    target_out: torch.Tensor

    @classmethod
    def of(cls, got: Retrieved, target: torch.Tensor) -> CutTies:
        b, device = len(target), target.device
        valid = got.items > 0
        last = (valid.sum(1) - 1).clamp(min=0)
        kth = got.scores.gather(1, last[:, None]).squeeze(1)
        tied_in = (valid & (got.scores == kth[:, None])).sum(1)
        tied_out = torch.zeros(b, dtype=torch.long, device=device)
        target_out = torch.zeros(b, dtype=torch.bool, device=device)
        if got.tied_out is not None and len(got.tied_out):
            rows = torch.from_numpy(got.tied_out.rows).to(device)
            items = torch.from_numpy(got.tied_out.items).to(device)
            tied_out = torch.bincount(rows, minlength=b)
            target_out[rows[items == target[rows]]] = True
        return cls(kth, tied_in, tied_out, target_out)

    def target_tied(self, got: Retrieved, target: torch.Tensor) -> torch.Tensor:
        """(B,) True where the target shares the N-th score with items left out (it was
        retrieved at that score, or left out at it)."""
        at_kth = ((got.items == target[:, None]) & (got.scores == self.kth[:, None])).any(1)
        return (self.tied_out > 0) & (at_kth | self.target_out)

    def inclusion(self, got: Retrieved, target: torch.Tensor) -> torch.Tensor:
        """(B,) float64: the chance that the target is among the N under a random order of
        the ties at the cut: tied_in / (tied_in + tied_out) where the target is tied there,
        else 1."""
        share = self.tied_in.double() / (self.tied_in + self.tied_out).clamp(min=1).double()
        return torch.where(self.target_tied(got, target), share, torch.ones_like(share))


def cutoff_metrics(got: Retrieved, target: torch.Tensor, ks: tuple[int, ...] = KS
                   ) -> dict[str, torch.Tensor]:
    """The retriever's own per-instance metrics at K <= N, with full ranking's tie rule
    across the cut: a target that shares the N-th score with items left out ranks uniformly
    among all of them (:func:`gensr.eval.metrics.bound_metrics`), whether it was retrieved
    or not, so the result equals full ranking by the retriever's scores."""
    scores = got.scores.masked_fill(got.items <= 0, float("-inf"))
    found = got.items == target[:, None]
    present = found.any(1)
    s_t = scores.gather(1, found.float().argmax(1, keepdim=True))
    g = (scores > s_t).sum(1)
    e = (scores == s_t).sum(1) - 1
    cut = CutTies.of(got, target)
    tied = cut.target_tied(got, target)
    g = torch.where(cut.target_out, (scores > cut.kth[:, None]).sum(1), g)
    e = torch.where(cut.target_out, cut.tied_in + cut.tied_out - 1,
                    torch.where(tied, e + cut.tied_out, e))
    counted = present | cut.target_out
    g, e = g.masked_fill(~counted, 0), e.masked_fill(~counted, 0)
    metrics = bound_metrics(g, e, ks)
    return {k: torch.where(counted, v, torch.zeros_like(v)) for k, v in metrics.items()}


def rerank_candidates(got: Retrieved, target: torch.Tensor
                      ) -> tuple[Retrieved, torch.Tensor]:
    """What a reranker scores for an evaluation, and the weight of its metrics.

    A target left out at a tie at the N-th score takes the place of the last retrieved item
    of that tie (so the reranker scores it); a target tied at the cut, retrieved or not, is
    in the N with probability tied_in / (tied_in + tied_out) under full ranking's tie rule,
    and its reranked metrics count with that weight. Elsewhere: the retrieval itself, weight
    1."""
    cut = CutTies.of(got, target)
    weight = cut.inclusion(got, target)
    if not bool(cut.target_out.any()):
        return got, weight
    items = got.items.clone()
    rows = torch.nonzero(cut.target_out).squeeze(1)
    last = (items[rows] > 0).sum(1) - 1
    items[rows, last] = target[rows]
    return Retrieved(items, got.scores, got.tied_out), weight


def rerank_batch(model: SRModel, batch: Batch, got: Retrieved) -> torch.Tensor:
    """(B, N') reranker scores of the retrieved items (``-inf`` at padding); N' = the widest
    row (all-padding columns are not scored). ``batch``: the instances as the model reads
    them (its candidates are replaced by the retrieved items).

    The one rerank step: evaluation (:func:`evaluate_rerank`, after
    :func:`rerank_candidates`) and serving (:class:`gensr.serve.full.CatalogueRanker`) both
    score through it, so a served full-catalogue answer is the evaluated one."""
    width = int(got.counts().max()) if len(got.items) else 0
    width = max(width, 1)
    cands = got.items[:, :width].to(batch.user.device)
    scores = model.score(_with_candidates(batch, cands)).float()
    return scores.masked_fill(cands <= 0, float("-inf"))


def _with_candidates(batch: Batch, candidates: torch.Tensor) -> Batch:
    return Batch(user=batch.user, task=batch.task, query=batch.query, hist_item=batch.hist_item,
                 hist_behaviour=batch.hist_behaviour, hist_query=batch.hist_query,
                 candidates=candidates)


@torch.no_grad()
def evaluate_rerank(
    model: SRModel | None,
    retriever: Retriever,
    data: SRData,
    split: str = "test",
    *,
    n: int = 100,
    batch_size: int = 64,
    tasks: tuple[str, ...] | None = None,
    ks: tuple[int, ...] = KS,
    device: torch.device | str | None = None,
    progress: bool = True,
    max_instances: int | None = None,
    seed: int = 0,
    rankings_out: str | Path | None = None,
    fuse: tuple[float, ...] = (),
) -> RerankResult:
    """Retrieve ``n`` items per instance of ``split`` with ``retriever`` and rerank them with
    ``model`` (None: the retriever alone); metrics per task at ``rerank_ks(n)``. ``fuse``:
    also the metrics of the fused score (:func:`fuse_scores`) for each of these weights.

    Tasks: those the retriever (and the model) serve, of ``tasks``. ``max_instances`` takes
    the same seeded subset as :func:`gensr.eval.protocol.evaluate`. ``rankings_out`` writes
    every instance's retrieved items and reranked order (Parquet; :func:`write_rankings`).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    served = [t for t in (tasks or ("rec", "src")) if t in retriever.tasks
              and (model is None or t in model.tasks)]
    ks = rerank_ks(n, ks)
    table, targets = full_instances(data, split, tuple(served), max_instances, seed)
    seen = seen_before(data, split)
    if model is not None:
        was_training = model.training
        model.eval()
        device = torch.device(device) if device is not None else model.device
    else:
        device = torch.device(device) if device is not None else torch.device("cpu")
    fuse = tuple(float(w) for w in fuse) if model is not None else ()
    parts: dict[str, dict[str, dict[str, list[torch.Tensor]]]] = {
        who: {t: {} for t in TASK_INDEX}
        for who in ("retriever", "rerank", *(f"fused:{w}" for w in fuse))}
    saved: list[dict] = []
    seconds = {"retrieve": 0.0, "rerank": 0.0}
    ret_len = retriever.max_his_len
    model_len = model.history_window if model is not None else 0
    for start in progress_bar(range(0, len(table), batch_size),
                              desc=f"{retriever.name}"
                                   f"{'' if model is None else ' → ' + model.name} {split}",
                              enabled=progress, leave=False):
        idx = np.arange(start, min(start + batch_size, len(table)))
        target = torch.from_numpy(targets[idx]).to(device)
        rows, items = masked_pairs(seen, table.user[idx], targets[idx])
        t0 = time.perf_counter()
        rbatch = table.make_batch(data, idx, ret_len).to(device)
        got = retriever.retrieve(rbatch, n, Exclusion(rows, items)).to(device)
        t1 = time.perf_counter()
        seconds["retrieve"] += t1 - t0
        _collect(parts["retriever"], cutoff_metrics(got, target, ks), rbatch.task)
        reranked = scored = fused_scores = None
        if model is not None:
            mbatch = table.make_batch(data, idx, model_len).to(device)
            scored, weight = rerank_candidates(got, target)
            scores = rerank_batch(model, mbatch, scored)
            width = scores.shape[1]
            metrics = _metrics(scores, scored.items[:, :width], target, ks)
            _collect(parts["rerank"], {k: v * weight for k, v in metrics.items()}, mbatch.task)
            for w in fuse:
                fused = fuse_scores(scores, scored.scores[:, :width], w)
                metrics = _metrics(fused, scored.items[:, :width], target, ks)
                _collect(parts[f"fused:{w}"], {k: v * weight for k, v in metrics.items()},
                         mbatch.task)
                fused_scores = fused if len(fuse) == 1 else None
            reranked = scores
            seconds["rerank"] += time.perf_counter() - t1
        if rankings_out is not None:
            saved.extend(_ranking_rows(table, idx, targets, got, reranked, scored,
                                       fused_scores))
    if model is not None and was_training:
        model.train()
    if rankings_out is not None:
        write_rankings(saved, rankings_out)
    summary = {who: _summary(per, ks) for who, per in parts.items()}
    return RerankResult(retriever=summary["retriever"],
                        rerank=summary["rerank"] if model is not None else None,
                        n=n, instances=len(table),
                        seconds={k: round(v, 3) for k, v in seconds.items()},
                        fused={w: summary[f"fused:{w}"] for w in fuse},
                        per_instance={who: {t: {m: torch.cat(v).numpy() for m, v in ms.items()}
                                            for t, ms in per.items() if ms}
                                      for who, per in parts.items()})


def _collect(into: dict[str, dict[str, list[torch.Tensor]]],
             metrics: dict[str, torch.Tensor], task: torch.Tensor) -> None:
    for name, index in TASK_INDEX.items():
        sel = task == index
        if bool(sel.any()):
            for metric, values in metrics.items():
                into[name].setdefault(metric, []).append(values[sel].cpu())


def _summary(per_task: dict[str, dict[str, list[torch.Tensor]]], ks: tuple[int, ...]
             ) -> Metrics:
    out: Metrics = {}
    names = [f"{m}@{k}" for k in ks for m in ("R", "N")]
    for task, parts in per_task.items():
        if not parts:
            continue
        row = {name: float(torch.cat(parts[name]).mean()) for name in names}
        row["n"] = int(sum(len(p) for p in parts[names[0]]))
        out[task] = row
    return out


def _ranking_rows(table: InstanceTable, idx: np.ndarray, targets: np.ndarray,
                  got: Retrieved, reranked: torch.Tensor | None,
                  scored: Retrieved | None = None,
                  fused: torch.Tensor | None = None) -> list[dict]:
    items = got.items.cpu().numpy()
    ranked = items if scored is None else scored.items.cpu().numpy()
    rscores = got.scores.cpu().numpy()
    rows = []
    for j, i in enumerate(idx):
        valid = items[j] > 0
        row = {"instance_id": int(table.instance_id[i]) if table.instance_id is not None
               else -1, "user_id": int(table.user[i]),
               "task": "rec" if table.task[i] == 0 else "src",
               "target_item": int(targets[i]),
               "retrieved": items[j][valid].tolist(),
               "retrieval_scores": rscores[j][valid].astype(np.float32).tolist()}
        if reranked is not None:
            s = reranked[j].cpu().numpy()
            k = len(s)
            cand = ranked[j][:k]
            ok = cand > 0
            order = np.argsort(-s[ok], kind="stable")
            row["ranking"] = cand[ok][order].tolist()
            row["scores"] = s[ok][order].astype(np.float32).tolist()
            if fused is not None:  # one fusion weight: its order too
                f = fused[j].cpu().numpy()[ok]
                order = np.argsort(-f, kind="stable")
                row["fused_ranking"] = cand[ok][order].tolist()
                row["fused_scores"] = f[order].astype(np.float32).tolist()
        rows.append(row)
    return rows


def write_rankings(rows: list[dict], path: str | Path) -> None:
    """One row per instance: ``instance_id``, ``user_id``, ``task``, ``target_item``,
    ``retrieved`` (item ids in retrieval order) with ``retrieval_scores``, and with a
    reranker ``ranking`` (the same items best first) with its ``scores``."""
    schema = {"instance_id": pl.Int64, "user_id": pl.Int64, "task": pl.Utf8,
              "target_item": pl.Int64, "retrieved": pl.List(pl.Int64),
              "retrieval_scores": pl.List(pl.Float32)}
    if rows and "ranking" in rows[0]:
        schema.update({"ranking": pl.List(pl.Int64), "scores": pl.List(pl.Float32)})
    if rows and "fused_ranking" in rows[0]:
        schema.update({"fused_ranking": pl.List(pl.Int64),
                       "fused_scores": pl.List(pl.Float32)})
    pl.DataFrame(rows, schema=schema).write_parquet(path)
