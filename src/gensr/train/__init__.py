"""The one trainer every model uses: :func:`fit` (the loop), :class:`TrainConfig` (its
settings) and :func:`train_run` (what ``gensr train`` calls: configs, run directory, resume)."""

from gensr.train.checkpoint import TrainState
from gensr.train.config import TrainConfig
from gensr.train.loop import fit
from gensr.train.run import build_configs, train_run

__all__ = ["TrainConfig", "TrainState", "build_configs", "fit", "train_run"]
