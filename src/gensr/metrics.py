"""Recall@K and NDCG@K from scores, with ties that never favour the positive.

With one relevant item, Recall@K = 1[rank < K] and NDCG@K = 1[rank < K] / log2(rank + 2)
(rank 0-based). When the positive ties with other candidates its rank is not determined by
the scores. gensr's default (``ties="expected"``) reports the *expected* metric under a
uniformly random order of the tied items: with ``g`` candidates scored strictly higher and
``e`` others tied, the rank is uniform on ``g..g+e``. A constant scorer therefore gets exactly
R@K = K/C (0.05 for R@5 with 100 candidates), never 1.0.

``ties="pessimistic"`` puts the positive after all its ties (a constant scorer gets 0) and
``ties="optimistic"`` before them (1.0), which is what the GenSR reference evaluation did: it
placed the positive at index 0 and sorted, so ties ranked it first.
"""

from __future__ import annotations

from typing import Literal

import torch

KS: tuple[int, ...] = (1, 5, 10, 20)
TieRule = Literal["expected", "pessimistic", "optimistic"]


def positive_rank_bounds(scores: torch.Tensor, target_pos: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(g, e): candidates scored strictly above the positive, and the others tied with it.

    ``scores`` (B, C); ``target_pos`` (B,). NaN scores are treated as the lowest score.
    """
    scores = torch.nan_to_num(scores.double(), nan=float("-inf"))
    pos = scores.gather(1, target_pos.view(-1, 1))
    greater = (scores > pos).sum(1)
    ties = (scores == pos).sum(1) - 1
    return greater, ties


def rank_metrics(
    scores: torch.Tensor,
    target_pos: torch.Tensor,
    ks: tuple[int, ...] = KS,
    ties: TieRule = "expected",
) -> dict[str, torch.Tensor]:
    """Per-instance ``R@K`` and ``N@K`` (each a (B,) float64 tensor) for every K in ``ks``."""
    g, e = positive_rank_bounds(scores, target_pos)
    if ties == "pessimistic":
        g, e = g + e, torch.zeros_like(e)
    elif ties == "optimistic":
        e = torch.zeros_like(e)
    elif ties != "expected":
        raise ValueError(f"ties must be expected, pessimistic or optimistic, not {ties!r}")
    return bound_metrics(g, e, ks, scores.shape[1])


def bound_metrics(g: torch.Tensor, e: torch.Tensor, ks: tuple[int, ...] = KS,
                  size: int | None = None) -> dict[str, torch.Tensor]:
    """Per-instance ``R@K``/``N@K`` of a positive whose 0-based rank is uniform on
    ``g..g+e`` (``g`` items strictly above it, ``e`` others tied with it): the expected
    metric under a random order of the ties (:func:`rank_metrics`). ``size``: at least
    ``max(g + e) + 1`` (found when None)."""
    if size is None:
        size = int((g + e).max()) + 1 if len(g) else 1
    ranks = torch.arange(size + 1, dtype=torch.float64, device=g.device)
    out: dict[str, torch.Tensor] = {}
    for k in ks:
        hit = (ranks < k).double()
        gain = hit / torch.log2(ranks + 2.0)
        # prefix sums so the mean over ranks g..g+e is (P[g+e+1] - P[g]) / (e+1)
        p_hit = torch.cat([hit.new_zeros(1), hit.cumsum(0)])
        p_gain = torch.cat([gain.new_zeros(1), gain.cumsum(0)])
        lo, hi = g, g + e + 1
        width = (e + 1).double()
        out[f"R@{k}"] = (p_hit[hi] - p_hit[lo]) / width
        out[f"N@{k}"] = (p_gain[hi] - p_gain[lo]) / width
    return out


def metric_names(ks: tuple[int, ...] = KS) -> list[str]:
    """Metric names in table order: R@1 N@1 R@5 N@5 …"""
    return [f"{m}@{k}" for k in ks for m in ("R", "N")]
