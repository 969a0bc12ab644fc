"""Pieces every analysis shares: optional dependencies, run loading, outputs, small helpers."""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from gensr.data.batching import TASK_INDEX, InstanceTable
from gensr.data.dataset import SRData, load_data
from gensr.errors import ConfigError, RunError
from gensr.models.base import SRModel, read_model_card
from gensr.progress import progress as progress_bar
from gensr.runs import load_run, read_run_info

TASKS: tuple[str, ...] = ("rec", "src")
EXTRA_HINT = "pip install 'gensr[analysis]'"


def require(module: str) -> Any:
    """Import an optional dependency of the analyses, or fail naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        name = {"sklearn": "scikit-learn"}.get(top, top)
        raise ConfigError(f"gensr analyze needs {name} (the 'analysis' extra): "
                          f"{EXTRA_HINT}") from None


def pyplot() -> Any:
    """matplotlib's pyplot on the non-interactive Agg backend."""
    mpl = require("matplotlib")
    mpl.use("Agg", force=True)
    return importlib.import_module("matplotlib.pyplot")


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG (150 dpi) and close it."""
    plt = pyplot()
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path


def prepare_out(out: str | Path) -> Path:
    """The output folder of an analysis (created; existing files of the same name are
    overwritten)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_csv(rows: Sequence[dict[str, Any]] | pl.DataFrame, path: Path) -> Path:
    """Rows (dicts with the same keys) or a frame -> CSV."""
    frame = rows if isinstance(rows, pl.DataFrame) else pl.DataFrame(
        list(rows), infer_schema_length=None)
    frame.write_csv(path)
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return _jsonable(value.item())
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(obj: dict[str, Any], path: Path) -> Path:
    """A JSON summary (NaN/inf written as null)."""
    path.write_text(json.dumps(_jsonable(obj), indent=2) + "\n")
    return path


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count of the finite values."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(arr) == 0:
        return math.nan, math.nan, 0
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, len(arr)


# --- runs --------------------------------------------------------------------------------
@dataclass
class AnalysisRun:
    """A model to analyse: a label (runs sharing a label form a group, e.g. training seeds),
    the model in eval mode, and where it came from."""

    label: str
    model: SRModel
    run_dir: Path | None = None

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def cf_path(self) -> str:
        return str(getattr(self.model.config, "cf_path", "") or "")


def parse_run_spec(spec: str) -> tuple[str | None, Path]:
    """``RUN_DIR`` or ``LABEL=RUN_DIR``."""
    label, sep, path = spec.partition("=")
    if sep and label and not Path(spec).exists():
        return label, Path(path)
    return None, Path(spec)


def load_runs(specs: Sequence[str], data_dir: str | Path | None = None,
              device: str | None = None) -> tuple[list[AnalysisRun], SRData]:
    """Load run directories (``RUN_DIR`` or ``LABEL=RUN_DIR``); all must share one data
    directory (checked by fingerprint). The label defaults to the run's model name."""
    if not specs:
        raise ConfigError("give at least one run directory")
    parsed = [parse_run_spec(s) for s in specs]
    data: SRData | None = load_data(data_dir) if data_dir is not None else None
    if data is None:
        first = parsed[0][1]
        info = read_run_info(first)
        if "data_dir" not in info:
            read_model_card(first)  # a clear error when it is not a run at all
            raise RunError(f"{first}/run.json names no data directory: pass --data")
        data = load_data(info["data_dir"])
    runs = []
    for label, path in parsed:
        card = read_model_card(path)
        if card.get("data_fingerprint") != data.fingerprint:
            raise RunError(f"{path} was trained on data {card.get('data_fingerprint')}, but "
                           f"the analysis uses {data.path} ({data.fingerprint}): every run "
                           "must share one data directory")
        model, _ = load_run(path, data, device)
        runs.append(AnalysisRun(label or model.name, model, path))
    return runs, data


def shared_cf_path(runs: Sequence[AnalysisRun], cf: str | Path | None) -> Path:
    """The CF table the model-independent features read: ``cf`` if given, else the one table
    the runs were trained with (an error when they name none or several)."""
    if cf is not None:
        path = Path(cf)
    else:
        from gensr.cf.table import file_sha256

        # runs hold their own copies of one table: the same file bytes count as one table
        by_hash: dict[str, str] = {}
        for r in runs:
            if r.cf_path and Path(r.cf_path).is_file():
                by_hash.setdefault(file_sha256(r.cf_path), r.cf_path)
        named = sorted(by_hash.values()) or sorted({r.cf_path for r in runs if r.cf_path})
        if len(named) != 1:
            why = "none of the runs names one" if not named else f"the runs name {named}"
            raise ConfigError(f"the analysis features need one CF table and {why}: pass "
                              "--cf PATH (a `gensr pretrain-cf` table of this data)")
        path = Path(named[0])
    if not path.is_file():
        raise ConfigError(f"CF table {path} does not exist (make one with `gensr pretrain-cf`)")
    return path


# --- instances -----------------------------------------------------------------------------
def task_instances(data: SRData, split: str, task: str, max_instances: int | None,
                   seed: int = 0) -> InstanceTable:
    """A seeded subset of ``split``'s stored instances of one task: ``max_instances`` of that
    task (the analyses count per task, unlike the evaluation's subset of both tasks)."""
    from gensr.data.batching import eval_instances, seeded_subset

    if task not in TASK_INDEX:
        raise ConfigError(f"unknown task {task!r}; use rec or src")
    return seeded_subset(eval_instances(data, split, tasks=(task,)), max_instances, seed)


def restrict_candidates(table: InstanceTable, k: int) -> InstanceTable:
    """The target and the first ``k − 1`` other stored candidates (in their stored, shuffled
    order) of every instance: the same deterministic pairs for every model."""
    if table.target_pos is None:
        raise ConfigError("restrict_candidates needs evaluation instances (with target_pos)")
    n, c = table.candidates.shape
    if not 1 <= k <= c:
        raise ConfigError(f"--candidates must be in [1, {c}], got {k}")
    is_target = np.arange(c)[None, :] == table.target_pos[:, None]
    # rank of each column among the non-target ones: keep the target + the first k-1 others
    other_rank = np.cumsum(~is_target, axis=1) - 1
    keep = is_target | (other_rank < k - 1)
    cols = np.nonzero(keep)[1].reshape(n, k)
    cands = np.take_along_axis(table.candidates, cols, axis=1)
    target_pos = np.argmax(np.take_along_axis(is_target, cols, axis=1), axis=1)
    return InstanceTable(user=table.user, task=table.task, query=table.query, seq=table.seq,
                         candidates=cands, target_pos=target_pos.astype(np.int64))


def targets_only(table: InstanceTable) -> InstanceTable:
    """Each instance with its target as the only candidate."""
    return restrict_candidates(table, 1)


@torch.no_grad()
def score_table(model: SRModel, data: SRData, table: InstanceTable, batch_size: int = 32,
                progress: bool = True, desc: str = "score") -> np.ndarray:
    """``model.score`` of every (instance, candidate) of ``table``: (N, C) float64."""
    model.eval()
    out = []
    total = math.ceil(len(table) / batch_size)
    for batch in progress_bar(table.batches(data, batch_size, model.history_window),
                              total=total, desc=desc, enabled=progress, leave=False):
        out.append(model.score(batch.to(model.device)).float().cpu().numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, 0))


@torch.no_grad()
def representation_table(model: SRModel, data: SRData, table: InstanceTable,
                         batch_size: int = 32, progress: bool = True,
                         desc: str = "representation") -> np.ndarray:
    """``model.representation`` of every (instance, candidate): (N, C, d) float32."""
    model.eval()
    out = []
    total = math.ceil(len(table) / batch_size)
    for batch in progress_bar(table.batches(data, batch_size, model.history_window),
                              total=total, desc=desc, enabled=progress, leave=False):
        try:
            rep = model.representation(batch.to(model.device))
        except NotImplementedError as err:
            raise ConfigError(f"{model.name}: {err} (this analysis needs models that "
                              "implement representation())") from None
        out.append(rep.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0, 0), np.float32)


def rank_gauss(values: np.ndarray) -> np.ndarray:
    """Monotone map of ``values`` to standard-normal quantiles of their ranks (ties share
    their average rank). Mutual information is invariant to it; it gives every model's
    scores the same N(0, 1) marginal, so MINE sees no model-specific scale."""
    stats = require("scipy.stats")
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return values
    ranks = stats.rankdata(values, method="average")
    return stats.norm.ppf(ranks / (len(values) + 1))


def standardise(x: np.ndarray) -> np.ndarray:
    """Columns to zero mean, unit variance (constant columns become 0)."""
    x = np.asarray(x, dtype=np.float64)
    mu = x.mean(axis=0, keepdims=True)
    sd = x.std(axis=0, keepdims=True)
    return np.where(sd > 1e-12, (x - mu) / np.where(sd > 1e-12, sd, 1.0), 0.0)


def parse_values(text: str) -> list[float]:
    """``"0.05,0.1,0.2"`` -> floats, with a clear error."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--values must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise ConfigError("--values is empty")
    return values


def parse_ints(text: str, option: str) -> list[int]:
    """``"0,1,2"`` -> ints, with a clear error naming ``option``."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{option} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise ConfigError(f"{option} is empty")
    return values
