"""The evaluation's metrics: :mod:`gensr.metrics` (Recall@K and NDCG@K with their tie rule),
which lives below every other layer so that LightGCN pretraining (``cf/``) can validate with
it; the evaluation code imports it from here or from there alike."""

from gensr.metrics import (
    KS,
    TieRule,
    bound_metrics,
    metric_names,
    positive_rank_bounds,
    rank_metrics,
)

__all__ = ["KS", "TieRule", "bound_metrics", "metric_names", "positive_rank_bounds",
           "rank_metrics"]
