"""The one evaluation protocol every model is scored by (see :mod:`gensr.eval.protocol`)."""

from gensr.eval.metrics import KS, rank_metrics
from gensr.eval.protocol import evaluate, evaluate_full

__all__ = ["KS", "evaluate", "evaluate_full", "rank_metrics"]
