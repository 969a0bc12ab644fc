"""Reuse or make: the one owner of "this run exists", "this CF table exists" and "this run's
evaluation exists". ``gensr compare``, the analyses (``gensr analyze sweep|ablate``) and
``gensr quickstart`` all go through it, so they reuse by the same rules:

* **a run** (:func:`ensure_run`) is *reused* when ``run.json`` says it finished
  (:data:`gensr.runs.FINISHED`) and it was trained on the same data with the same model and
  train settings (settings that only change how training is watched, :data:`WATCH_ONLY`, are
  ignored); *resumed* from its ``last/`` checkpoint when it was interrupted; *trained*
  otherwise (a folder gensr left before its first checkpoint is cleared first). A run with
  other settings or data is refused, or with ``replace=True`` (a folder the caller owns, as
  quickstart's) deleted and trained again;
* **a CF table** (:func:`ensure_cf_table`) is reused when it was pretrained on the same data
  and refused otherwise; it is pretrained when missing;
* **an evaluation** (:func:`evaluate_run`) is cached in ``RUN_DIR/compare_eval[.STRATEGY].json``
  with a signature of the settings, the instances and candidates (a digest), the run's state
  and the data; a matching cache is read back instead of scoring again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from gensr.config import update_config
from gensr.data.batching import TASK_INDEX, InstanceTable, eval_instances
from gensr.data.candidates import DEFAULT_STRATEGY, STRATEGIES
from gensr.data.dataset import SRData
from gensr.errors import ConfigError, RunError
from gensr.eval.protocol import instance_metrics, summarise_instances
from gensr.eval.tables import TABLE_METRICS
from gensr.models.registry import model_class
from gensr.outputs import remove_owned, writer_lock
from gensr.runs import FINISHED, RunInfo, load_run, pick_device, prepare_inference
from gensr.tensor import resolve_precision
from gensr.train import TrainConfig, train_run
from gensr.train.checkpoint import LAST

# train settings that change how a run is watched, not what it learns: ignored on reuse
WATCH_ONLY = ("progress", "device", "log_every", "eval_batch_size", "precision")
EVAL_FILE = "compare_eval.json"


# --- runs -------------------------------------------------------------------------------------
def normal(value: Any) -> Any:
    """``value`` as run.json stores it (tuples -> lists)."""
    return json.loads(json.dumps(value))


def differences(wanted: dict[str, Any], stored: dict[str, Any], skip: tuple[str, ...] = ()
                ) -> list[str]:
    """The keys whose values differ between two settings dicts (``skip`` left out)."""
    keys = sorted((set(wanted) | set(stored)) - set(skip))
    return [k for k in keys if normal(wanted.get(k)) != normal(stored.get(k))]


def write_run_yaml(path: Path, model_values: dict[str, Any], train_values: dict[str, Any]
                   ) -> None:
    """The ``model:``/``train:`` YAML a run is trained from (``gensr train --config``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"model": normal(model_values),
                                    "train": normal(train_values)}, sort_keys=False))


def ensure_run(run_dir: Path, kind: str, model_values: dict[str, Any],
               train_values: dict[str, Any], data: SRData, *, device: str | None,
               log: Callable[[str], None], progress: bool = True, replace: bool = False,
               config_file: Path | None = None) -> tuple[str, RunInfo]:
    """Reuse, resume or train the run of model ``kind`` with these settings in ``run_dir``
    (see the module docstring); returns (reused | resumed | trained | built, its record).

    ``progress=False`` trains without a progress bar. ``replace``: a run with other settings
    or data is deleted and trained again instead of refused (only for folders the caller
    owns). ``config_file``: where the run's YAML is written (default: beside ``run_dir``).
    The run directory's writer lock is held throughout (two commands never decide about, or
    write, one run at once)."""
    with writer_lock(run_dir, RunError, what="run directory", log=log):
        return _ensure_run(run_dir, kind, model_values, train_values, data, device=device,
                           log=log, progress=progress, replace=replace,
                           config_file=config_file)


def _ensure_run(run_dir: Path, kind: str, model_values: dict[str, Any],
                train_values: dict[str, Any], data: SRData, *, device: str | None,
                log: Callable[[str], None], progress: bool, replace: bool,
                config_file: Path | None) -> tuple[str, RunInfo]:
    cls = model_class(kind)
    train_values = dict(train_values)
    if not progress:
        train_values["progress"] = False
    wanted_model = dataclasses.asdict(update_config(cls.config_class(), model_values))
    wanted_train = dataclasses.asdict(update_config(TrainConfig(), train_values))
    info = RunInfo.read(run_dir)
    if info is not None:
        problem = _mismatch(info, kind, data, wanted_model, wanted_train, cls.trainable,
                            run_dir)
        if problem is not None and not replace:
            raise problem
        if problem is not None:
            log(f"  {run_dir} holds a run with other settings or data: training it again")
            remove_owned(run_dir, "run", RunError, {"data directory": data.path})
        elif info.finished and (run_dir / "model.json").exists():
            return "reused", info
        elif (run_dir / LAST).exists():
            log(f"  resuming the interrupted run in {run_dir} (step {info.steps})")
            quiet = [] if progress else ["train.progress=false"]
            return "resumed", train_run(run_dir, resume=True, sets=quiet, device=device,
                                        log=log)
    if run_dir.exists() and any(run_dir.iterdir()):
        if (run_dir / LAST).exists():
            raise RunError(f"{run_dir} has a checkpoint but no run.json: move it away")
        log(f"  {run_dir} holds a run that never reached a checkpoint: starting it again")
        remove_owned(run_dir, "run", RunError, {"data directory": data.path})
    config_file = config_file or run_dir.parent / f"{run_dir.name}.yaml"
    write_run_yaml(config_file, model_values, train_values)
    info = train_run(run_dir, kind, data.path, config_path=config_file, device=device, log=log)
    return ("trained" if cls.trainable else "built"), info


def _mismatch(info: RunInfo, kind: str, data: SRData, wanted_model: dict[str, Any],
              wanted_train: dict[str, Any], trainable: bool, run_dir: Path
              ) -> Exception | None:
    """Why the recorded run is not the one asked for (None when it is)."""
    if info.model != kind:
        return RunError(f"{run_dir} holds a {info.model} run, not {kind}")
    if info.data_fingerprint != data.fingerprint:
        return RunError(f"{run_dir} was trained on data {info.data_fingerprint}, but "
                        f"{data.path} is {data.fingerprint}: use another --out")
    # the stored settings read through today's configs: a field added since (with its
    # default) or retired since (ModelConfig.RETIRED) is no change
    cls = model_class(kind)
    try:
        stored_model = dataclasses.asdict(update_config(cls.config_class(), info.model_config))
        stored_train = dataclasses.asdict(update_config(TrainConfig(), info.train_config))
    except ConfigError as err:
        return ConfigError(f"{run_dir}: its run.json settings no longer load ({err}); delete "
                           "it or choose another --out")
    changed = differences(wanted_model, stored_model)
    if trainable:
        changed += [f"train.{k}" for k in differences(wanted_train, stored_train, WATCH_ONLY)]
    if changed:
        return ConfigError(f"{run_dir} was run with other settings ({', '.join(changed[:6])}); "
                           "delete it or choose another --out to train with the new ones")
    return None


def is_finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished run (:data:`gensr.runs.FINISHED`)."""
    info = RunInfo.read(run_dir)
    return info is not None and info.status in FINISHED


# --- CF tables ---------------------------------------------------------------------------------
def ensure_cf_table(path: Path, data: SRData, *, settings: dict[str, Any] | None = None,
                    device: str | None = None, log: Callable[[str], None] = print,
                    progress: bool = False) -> tuple[Path, dict[str, Any] | None]:
    """The CF table at ``path``: reused when it was pretrained on ``data`` (a table of other
    data is refused, naming it), pretrained with ``settings`` (``gensr pretrain-cf``'s)
    when missing. Returns (path, the pretraining card, or None when reused)."""
    from gensr.cf import CFTable, pretrain_cf

    if path.exists():
        CFTable.load(path, data)  # refuses a table of other data, in one line
        log(f"CF table: reusing {path}")
        return path, None
    log(f"CF table: pretraining LightGCN into {path}")
    card = pretrain_cf(data, path, device=device, progress=progress, **(settings or {}))
    return path, card


# --- evaluations -------------------------------------------------------------------------------
@dataclass
class EvalSettings:
    """How a run is evaluated (the same for every model of a comparison)."""

    split: str = "test"
    max_instances: int | None = None  # seeded subset of the split's instances (None: all)
    batch_size: int = 64
    ties: str = "expected"
    seed: int = 0
    candidates: str = DEFAULT_STRATEGY  # the candidate strategy (gensr.data.candidates)

    def __post_init__(self) -> None:
        if self.candidates not in STRATEGIES:
            raise ConfigError(f"eval.candidates must be one of {', '.join(STRATEGIES)}, got "
                              f"{self.candidates!r}")
        if self.split not in ("valid", "test"):
            raise ConfigError(f"eval.split must be valid or test, got {self.split!r}")
        if self.ties not in ("expected", "pessimistic", "optimistic"):
            raise ConfigError(f"eval.ties must be expected, pessimistic or optimistic, "
                              f"got {self.ties!r}")
        if self.max_instances is not None and self.max_instances < 1:
            raise ConfigError(f"eval.max_instances must be >= 1 or null, got "
                              f"{self.max_instances}")
        if self.batch_size < 1:
            raise ConfigError(f"eval.batch_size must be >= 1, got {self.batch_size}")


def evaluation_table(data: SRData, settings: EvalSettings) -> InstanceTable:
    """The evaluation instances every model ranks (one seeded subset of both tasks)."""
    return eval_instances(data, settings.split, max_instances=settings.max_instances,
                          seed=settings.seed, candidates=settings.candidates)


def table_digest(table: InstanceTable) -> str:
    """A short digest of the evaluation instances and their candidates."""
    h = hashlib.sha256()
    for values in (table.user, table.seq, table.candidates, table.target_pos):
        h.update(np.ascontiguousarray(values, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def strategy_suffix(strategy: str) -> str:
    """"" for the default candidates, ".STRATEGY" otherwise (file names of compare)."""
    return "" if strategy == DEFAULT_STRATEGY else f".{strategy}"


@dataclass
class RunEval:
    """One run's evaluation: per-task means, and per-instance values of the table metrics
    on ``rows`` (indices into the evaluation table) for the paired tests."""

    metrics: dict[str, Any]
    rows: np.ndarray
    values: dict[str, np.ndarray]
    seconds: float
    cached: bool


def eval_file(run_dir: Path, strategy: str = DEFAULT_STRATEGY) -> Path:
    """``RUN_DIR/compare_eval[.STRATEGY].json``: where a run's evaluation is cached."""
    return Path(run_dir) / f"{Path(EVAL_FILE).stem}{strategy_suffix(strategy)}.json"


def stored_eval(run_dir: Path, strategy: str = DEFAULT_STRATEGY
                ) -> tuple[RunEval, dict[str, Any]] | None:
    """The cached evaluation of the run on ``strategy``'s candidates with its signature, or
    None if there is none with per-instance values."""
    cache = eval_file(run_dir, strategy)
    if not cache.exists():
        return None
    try:
        stored = json.loads(cache.read_text())
    except (OSError, ValueError):  # a damaged cache is no cache: evaluated again
        return None
    if not isinstance(stored, dict) or "per_instance" not in stored:
        return None
    per = stored["per_instance"]
    run = RunEval(stored["metrics"], np.asarray(per["rows"], dtype=np.int64),
                  {m: np.asarray(per[m], dtype=np.float64) for m in TABLE_METRICS},
                  float(stored["time_s"]), True)
    return run, stored.get("signature", {})


def evaluate_run(run_dir: Path, info: RunInfo, data: SRData, table: InstanceTable,
                 settings: EvalSettings, *, device: str | None, progress: bool,
                 precision: str = "auto", fast_path: bool = True,
                 digest: str | None = None) -> RunEval:
    """The run's metrics on ``table`` (only the instances of the tasks it serves), read
    from its cache when the settings, instances, run state and data match. GenSR scores in
    ``precision`` (auto: bf16 on CUDA) with the fast path unless ``fast_path`` is False."""
    signature = {"settings": dataclasses.asdict(settings),
                 "n_instances": len(table),
                 "candidates": digest or table_digest(table),
                 "run": {"status": info.status, "steps": info.steps,
                         "best_step": info.best_step},
                 "data_fingerprint": data.fingerprint}
    used = resolve_precision(precision, pick_device(device))
    if info.model == "gensr" and used != "fp32":  # fp32 keeps earlier caches valid
        signature["precision"] = used
    found = stored_eval(run_dir, settings.candidates)
    if found is not None and found[1] == normal(signature):
        return found[0]
    start = time.time()
    model, _ = load_run(run_dir, data, device)
    prepare_inference(model, precision, fast_path)
    rows = np.nonzero(np.isin(table.task, [TASK_INDEX[t] for t in model.tasks]))[0]
    mine = table.subset(rows)
    values = instance_metrics(model, data, mine, batch_size=settings.batch_size,
                              ties=settings.ties,  # type: ignore[arg-type]
                              progress=progress, desc=f"{model.name} {settings.split}")
    metrics = summarise_instances(mine.task, values)
    seconds = time.time() - start
    kept = {m: values[m] for m in TABLE_METRICS}
    eval_file(run_dir, settings.candidates).write_text(json.dumps({
        "signature": signature, "metrics": metrics, "time_s": round(seconds, 2),
        "per_instance": {"rows": rows.tolist(), **{m: v.tolist() for m, v in kept.items()}},
    }))
    return RunEval(metrics, rows, kept, seconds, False)
