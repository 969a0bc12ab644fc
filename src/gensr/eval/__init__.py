"""The one evaluation protocol every model is scored by (see :mod:`gensr.eval.protocol`)."""

from gensr.eval.protocol import evaluate, evaluate_full
from gensr.metrics import KS, rank_metrics

__all__ = ["KS", "evaluate", "evaluate_full", "rank_metrics"]
