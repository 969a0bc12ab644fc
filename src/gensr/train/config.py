"""``TrainConfig``: every knob of the one trainer, typed and checked (nanoGPT's globals, as a
dataclass). The YAML ``train:`` section and ``--set train.key=value`` update it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from gensr.errors import ConfigError
from gensr.metrics import KS, metric_names
from gensr.threads import parse_threads

Precision = Literal["auto", "fp32", "bf16"]
METRIC_TASKS = ("mean", "rec", "src")


@dataclass
class TrainConfig:
    """How a model is trained. Defaults suit small models (SASRec); GenSR's reference run used
    lr 1e-4, weight_decay 1e-3, warmup_steps 200, patience 5 on R@5 (see configs/)."""

    # data: each instance = 1 positive + n_negatives sampled negatives (labels 1, 0, 0, …)
    n_negatives: int = 3
    # how many of an instance's n_negatives are hard (the rest uniform; 0 = all uniform, the
    # paper's), drawn anew each epoch from a pool of items the user never touched in training:
    #   bm25:     search instances only: the query's hard_pool top-BM25 items (the same
    #             generator as the bm25-hard evaluation candidates: it shares their bias)
    #   category: both tasks: items of the positive's own category (its full path)
    #   cf:       both tasks: the user's hard_pool top items by the CF table's user · item
    #             scores (LightGCN, cf_path of the model; what a reranker of it will see)
    hard_negatives: int = 0
    hard_source: Literal["bm25", "category", "cf"] = "bm25"
    hard_pool: int = 100
    hard_cf_path: str = ""  # hard_source cf: the CF table ("" = the model's own cf_path)
    batch_size: int = 128  # instances per optimizer step (over all processes together)
    # optimisation: AdamW on the model's param_groups, linear warm-up then linear decay to 0
    lr: float = 1e-3
    weight_decay: float = 1e-3
    warmup_steps: int = 200
    max_epochs: int = 20
    max_steps: int | None = None  # stop after this many optimizer steps (None: max_epochs)
    # stop once training has run this many minutes of wall time (None: no limit); the LR
    # schedule still decays over max_steps/max_epochs, so a budget cuts it short
    time_budget_min: float | None = None
    grad_clip: float = 1.0  # max global grad norm (0 = no clipping)
    # validation and early stopping
    eval_every: int | None = None  # steps between validations (None: twice per epoch)
    eval_fraction: float = 0.5  # seeded random share of the valid instances (reference: half)
    eval_max_instances: int | None = None  # cap on that subset (None: no cap)
    eval_seed: int | None = None  # seed of that subset (None: the run's seed)
    eval_batch_size: int = 128
    metric: str = "mean/N@10"  # TASK/METRIC, TASK in mean|rec|src; mean = over model.tasks
    patience: int = 5  # validations without improvement before stopping (0: never stop early)
    # run
    seed: int = 0
    log_every: int = 20  # steps between TensorBoard/progress-bar loss logs
    precision: Precision = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU
    device: str | None = None  # cpu | cuda (None: cuda if available)
    progress: bool = True  # a progress bar (plain lines when not a terminal: gensr.progress)
    # torch's CPU threads: auto = torch's count, one fewer per core other processes keep busy
    # (gensr.threads.ThreadGuard; a change may change rounding), torch = torch's count
    # unchanged, N = N threads (set a number for bitwise-reproducible runs on a shared machine)
    threads: str = "auto"

    def __post_init__(self) -> None:
        positive = ("n_negatives", "batch_size", "max_epochs", "eval_batch_size", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.hard_negatives <= self.n_negatives:
            raise ConfigError(f"train.hard_negatives must be in [0, train.n_negatives = "
                              f"{self.n_negatives}], got {self.hard_negatives}")
        if self.hard_source not in ("bm25", "category", "cf"):
            raise ConfigError(f"train.hard_source must be bm25, category or cf, got "
                              f"{self.hard_source!r}")
        if self.hard_pool < max(1, self.hard_negatives):
            raise ConfigError(f"train.hard_pool must be >= max(1, train.hard_negatives), got "
                              f"{self.hard_pool}")
        for name in ("max_steps", "eval_every", "eval_max_instances"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"train.{name} must be >= 1 or null, got {value}")
        for name in ("lr", "weight_decay", "grad_clip", "eval_fraction"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"train.{name} must be a finite number, got "
                                  f"{getattr(self, name)}")
        if self.time_budget_min is not None and self.time_budget_min <= 0:
            raise ConfigError(f"train.time_budget_min must be > 0 or null, got "
                              f"{self.time_budget_min}")
        for name in ("lr", "weight_decay", "warmup_steps", "grad_clip", "patience"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        self.threads = str(parse_threads(self.threads))
        if not 0.0 < self.eval_fraction <= 1.0:
            raise ConfigError(f"train.eval_fraction must be in (0, 1], got {self.eval_fraction}")
        parse_metric(self.metric)


def parse_metric(spec: str) -> tuple[str, str]:
    """``"mean/N@10"`` -> ``("mean", "N@10")``, with an error naming the valid choices."""
    task, sep, name = spec.partition("/")
    names = metric_names(KS)
    if not sep or task not in METRIC_TASKS or name not in names:
        raise ConfigError(
            f"train.metric {spec!r} is not TASK/METRIC with TASK in {list(METRIC_TASKS)} "
            f"and METRIC in {names} (e.g. 'mean/N@10', 'rec/R@5')"
        )
    return task, name


def metric_value(metrics: dict[str, dict[str, float]], spec: str) -> float:
    """The early-stopping value of ``spec`` in per-task ``metrics`` (mean over tasks present)."""
    task, name = parse_metric(spec)
    tasks = list(metrics) if task == "mean" else [task]
    missing = [t for t in tasks if t not in metrics]
    if missing or not tasks:
        raise ConfigError(f"train.metric {spec!r}: no validation metrics for task(s) "
                          f"{missing or [task]} (evaluated: {sorted(metrics)})")
    return sum(metrics[t][name] for t in tasks) / len(tasks)
