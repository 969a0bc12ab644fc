"""``gensr compare``: train what needs training, evaluate every model on the same candidates,
write the paper's Tables 2–3 layout.

For each model in ``--models`` and each seed, the run directory ``OUT/MODEL/seedS`` is

* **reused** when it holds a finished run (``run.json`` with status finished, early_stopped
  or not trainable) trained with the same settings — nothing is retrained;
* **resumed** when it holds an interrupted run (a ``last/`` checkpoint);
* **trained** (through :func:`gensr.train.train_run`, the shared trainer) otherwise.

Every model then ranks the same stored candidates (one candidate strategy,
:mod:`gensr.data.candidates`) of the same evaluation instances (one seeded subset for all
when ``eval.max_instances`` is set) with :func:`instance_metrics`; a model skips the tasks it
does not serve ("–" in the table). ``OUT/compare.md`` holds the table (rows = R@5 N@5 R@10
N@10 per task, columns = models, best in bold; mean ± std over seeds; † where the reference
model's difference is significant), the paired tests and the runs; ``OUT/compare.json`` the
metrics of every run, seeds, p-values, history windows, run directories, train and evaluation
times and the data fingerprint. With another candidate strategy than uniform the files are
``OUT/compare.STRATEGY.{md,json}``, so one OUT holds the tables of several strategies over
the same trained runs.

Fairness checks, before anything trains: every model that reads a history must read the same
window (``max_his_len``, counted in interactions of the canonical log by every model) unless
``allow_different_windows`` is set (the table then flags it); ``validation`` gives every
trained model the same validation subset for early stopping.

The YAML file (``--config``)::

    defaults:
      train: {...}            # TrainConfig fields for every trained model
    models:
      NAME:                   # a registered model name; entries not in --models are ignored
        type: MODEL           # only for a variant: NAME is then a column of its own (e.g.
                              # gensr-paper beside gensr), configuring registered model MODEL
        seeds: [0]            # this model's seeds, over the top-level seeds: (not --seeds)
        model: {...}          # fields of the model's config class
        train: {...}          # TrainConfig fields, over the defaults
    eval:
      max_instances: null     # seeded subset of the split's instances, the same for all models
      batch_size: 64
      ties: expected          # expected | pessimistic | optimistic
      seed: 0                 # the subset's seed
      candidates: uniform     # uniform | bm25-hard | popular (gensr data candidates)
    seeds: [0, 1, 2]          # seeds of every seeded model (default: train.seed, one run)
    history_window: 20        # max_his_len of every model that reads a history
    allow_different_windows: false
    validation:               # one validation subset for every trained model
      max_instances: 1000     # (sets train.eval_max_instances, eval_fraction 1, eval_seed)
      seed: 0
    significance:
      reference: gensr        # tested against every other model
      test: t-test            # t-test | bootstrap (paired, over the shared instances)
      alpha: 0.05
    cf: {...}                 # gensr pretrain-cf settings, used when compare pretrains the table
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import yaml

import gensr
from gensr.config import load_yaml, update_config
from gensr.data.batching import TASK_INDEX, InstanceTable, eval_instances, tasks_present
from gensr.data.candidates import DEFAULT_STRATEGY, STRATEGIES
from gensr.data.dataset import SRData, load_data
from gensr.errors import ConfigError, DataError, RunError
from gensr.eval.metrics import KS, metric_names
from gensr.eval.protocol import instance_metrics, summarise_instances
from gensr.eval.significance import TESTS, compare_to_reference
from gensr.eval.tables import TABLE_METRICS, TASK_NAMES, Cell, to_markdown
from gensr.models.base import ModelConfig
from gensr.models.registry import MODELS, model_class
from gensr.outputs import check_output_path, make_dir, remove_owned
from gensr.runs import load_run, pick_device, prepare_inference, read_run_info, resolve_precision
from gensr.train import TrainConfig, train_run
from gensr.train.checkpoint import LAST
from gensr.train.loop import STOP_REASONS, stop_reason

DEFAULT_MODELS = ("gensr", "unisar", "sasrec", "tem", "disc", "pop", "bm25")
FINISHED = ("finished", "early_stopped", "not trainable")
# train settings that change how a run is watched, not what it learns: ignored on reuse
WATCH_ONLY = ("progress", "device", "log_every", "eval_batch_size", "precision")
TOP_KEYS = ("defaults", "models", "eval", "cf", "seeds", "history_window",
            "allow_different_windows", "validation", "significance")
CF_FILE = "cf.safetensors"
EVAL_FILE = "compare_eval.json"
# the train settings that `validation:` sets for every trained model
VALIDATION_KEYS = ("eval_max_instances", "eval_fraction", "eval_seed")
SIGNIFICANCE_MARK = "†"
CANDIDATE_NOTES = {
    "uniform": "{n} negatives drawn uniformly from the items the user never interacted with "
               "(the paper's protocol)",
    "bm25-hard": "search: the {n} items with the highest BM25 score for the query that the "
                 "user never interacted with (GenSAR's protocol); recommendation: the uniform "
                 "negatives",
    "popular": "{n} negatives drawn without replacement with probability ∝ 1 + training "
               "count, among the items the user never interacted with",
}


def strategy_suffix(strategy: str) -> str:
    """"" for the default candidates, ".STRATEGY" otherwise (file names of compare)."""
    return "" if strategy == DEFAULT_STRATEGY else f".{strategy}"


@dataclass
class EvalSettings:
    """How ``compare`` evaluates: the same for every model."""

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


@dataclass
class ValidationSettings:
    """One validation subset for every trained model (early stopping and best checkpoint)."""

    max_instances: int = 1000  # valid instances of both tasks; each model keeps its tasks'
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_instances < 1:
            raise ConfigError(f"validation.max_instances must be >= 1, got "
                              f"{self.max_instances}")

    def train_values(self) -> dict[str, Any]:
        """The TrainConfig settings that give every model this subset."""
        return {"eval_max_instances": self.max_instances, "eval_fraction": 1.0,
                "eval_seed": self.seed}


@dataclass
class SignificanceSettings:
    """The paired tests of one model against every other (gensr.eval.significance)."""

    reference: str = "gensr"  # skipped when it is not among --models
    test: str = "t-test"  # t-test | bootstrap
    alpha: float = 0.05  # p below it: marked in the table
    n_boot: int = 10_000  # bootstrap resamples
    seed: int = 0  # bootstrap seed

    def __post_init__(self) -> None:
        if self.test not in TESTS:
            raise ConfigError(f"significance.test must be one of {', '.join(TESTS)}, got "
                              f"{self.test!r}")
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"significance.alpha must be in (0, 1), got {self.alpha}")
        if self.n_boot < 1:
            raise ConfigError(f"significance.n_boot must be >= 1, got {self.n_boot}")


@dataclass
class CompareConfig:
    """The parsed ``--config`` file (see the module docstring)."""

    default_train: dict[str, Any] = field(default_factory=dict)
    models: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    # a column name that is not a registered model -> the registered model it configures
    variants: dict[str, str] = field(default_factory=dict)
    # models.NAME.seeds: that model's seeds, over the top-level seeds (not over --seeds)
    model_seeds: dict[str, list[int]] = field(default_factory=dict)
    eval: EvalSettings = field(default_factory=EvalSettings)
    cf: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] | None = None
    history_window: int | None = None
    allow_different_windows: bool = False
    validation: ValidationSettings | None = None
    significance: SignificanceSettings = field(default_factory=SignificanceSettings)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping, got {value!r}")
    return value


def load_compare_config(path: str | Path | None) -> CompareConfig:
    """Read and check the YAML layout (values are checked when each model is configured)."""
    if path is None:
        return CompareConfig()
    doc = load_yaml(path)
    unknown = sorted(set(doc) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {unknown}; expected "
                          f"{list(TOP_KEYS)}")
    defaults = _mapping(doc.get("defaults"), f"{path}: defaults")
    bad = sorted(set(defaults) - {"train"})
    if bad:
        raise ConfigError(f"{path}: defaults takes only 'train:' (got {bad}); model "
                          "settings go under models.NAME.model")
    models: dict[str, dict[str, dict[str, Any]]] = {}
    variants: dict[str, str] = {}
    model_seeds: dict[str, list[int]] = {}
    for name, entry in _mapping(doc.get("models"), f"{path}: models").items():
        entry = _mapping(entry, f"{path}: models.{name}")
        kind = entry.get("type", name)
        if kind not in MODELS:
            raise ConfigError(f"{path}: models.{name}: unknown model {kind!r} (a column that "
                              "is not a model's name needs `type: MODEL`); available: "
                              f"{', '.join(MODELS)}")
        if name != kind:
            if name in MODELS or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", str(name)):
                raise ConfigError(f"{path}: models.{name}: a variant's name must be a plain "
                                  "name (letters, digits, - _ .) that is no model's own name")
            variants[str(name)] = kind
        bad = sorted(set(entry) - {"model", "train", "type", "seeds"})
        if bad:
            raise ConfigError(f"{path}: models.{name}: unknown key(s) {bad}; expected "
                              "'type:', 'model:', 'train:' and 'seeds:'")
        if entry.get("seeds") is not None:
            model_seeds[str(name)] = parse_seeds(entry["seeds"], f"{path}: models.{name}.seeds")
        models[name] = {s: dict(_mapping(entry.get(s), f"{path}: models.{name}.{s}"))
                        for s in ("model", "train")}
    settings = update_config(EvalSettings(), _mapping(doc.get("eval"), f"{path}: eval"),
                             prefix="eval.")
    validation = None
    if doc.get("validation") is not None:
        validation = update_config(ValidationSettings(),
                                   _mapping(doc["validation"], f"{path}: validation"),
                                   prefix="validation.")
    significance = update_config(SignificanceSettings(),
                                 _mapping(doc.get("significance"), f"{path}: significance"),
                                 prefix="significance.")
    window = doc.get("history_window")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int)
                               or window < 1):
        raise ConfigError(f"{path}: history_window must be a positive integer, got {window!r}")
    allow = doc.get("allow_different_windows", False)
    if not isinstance(allow, bool):
        raise ConfigError(f"{path}: allow_different_windows must be true or false, got "
                          f"{allow!r}")
    return CompareConfig(default_train=dict(_mapping(defaults.get("train"),
                                                     f"{path}: defaults.train")),
                         models=models, variants=variants, model_seeds=model_seeds,
                         eval=settings,
                         cf=dict(_mapping(doc.get("cf"), f"{path}: cf")),
                         seeds=parse_seeds(doc.get("seeds"), f"{path}: seeds"),
                         history_window=window, allow_different_windows=allow,
                         validation=validation, significance=significance)


def parse_seeds(value: Any, where: str = "seeds") -> list[int] | None:
    """A list of distinct integer seeds (or None), with an error naming ``where``."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{where} must be a non-empty list of integers, got {value!r}")
    seeds = []
    for v in value:
        try:
            if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
                raise ValueError
            seeds.append(int(v))
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {v!r} is not an integer seed") from None
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where} lists a seed more than once: {seeds}")
    return seeds


def parse_models(spec: str | list[str] | tuple[str, ...],
                 variants: dict[str, str] | None = None) -> list[str]:
    """``"gensr,unisar"`` -> ``["gensr", "unisar"]``, checked against the registry and the
    ``--config``'s named variants (``models.NAME.type``)."""
    names = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    if not names:
        raise ConfigError("--models names no model")
    known = [*MODELS, *(variants or {})]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"--models: unknown model(s) {unknown}; available: "
                          f"{', '.join(known)}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"--models lists {dupes} more than once")
    return names


@dataclass
class ModelPlan:
    """One model's settings as compare will train it (before the seed is applied)."""

    name: str  # the column (a model's name, or a variant's)
    model_values: dict[str, Any]
    train_values: dict[str, Any]
    model_config: ModelConfig
    train_config: TrainConfig
    kind: str = ""  # the registered model (= name unless a variant)

    def __post_init__(self) -> None:
        self.kind = self.kind or self.name

    @property
    def cls(self) -> type:
        return model_class(self.kind)

    @property
    def trainable(self) -> bool:
        return self.cls.trainable

    @property
    def seeded(self) -> bool:
        """Whether seeds change the result (trained models, and `random` via its seed)."""
        return self.trainable or "seed" in _field_names(type(self.model_config))

    @property
    def window(self) -> int | None:
        """The history window: ``max_his_len`` interactions (rows of the canonical log, the
        unit of every model's ``max_his_len``); None for models that read no history."""
        if not self.cls.reads_history:
            return None
        return int(self.model_config.max_his_len)

    @property
    def needs_cf(self) -> bool:
        cfg = self.model_config
        return ("cf_path" in _field_names(type(cfg))
                and not getattr(cfg, "cf_path")  # noqa: B009 - not every config has it
                and getattr(cfg, "use_cf_view", True))


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def plan_model(name: str, config: CompareConfig, cf_path: Path | None) -> ModelPlan:
    """The model and train settings of ``name`` (YAML defaults < model entry < ``--cf``;
    ``history_window`` under the model entry, ``validation`` over everything)."""
    kind = config.variants.get(name, name)
    cls = model_class(kind)
    entry = config.models.get(name, {"model": {}, "train": {}})
    model_values = dict(entry["model"])
    if config.history_window is not None and cls.reads_history:
        model_values = {"max_his_len": config.history_window, **model_values}
    train_values = {**config.default_train, **entry["train"]}
    if config.validation is not None and cls.trainable:
        clash = [k for k in VALIDATION_KEYS if k in train_values]
        if clash:
            where = (f"models.{name}.train" if clash[0] in entry["train"] else "defaults.train")
            raise ConfigError(f"{where}.{clash[0]} is set by validation: (one validation "
                              "subset for every model); remove it")
        train_values.update(config.validation.train_values())
    if cf_path is not None and "cf_path" in _field_names(cls.config_class):
        model_values["cf_path"] = str(cf_path)
    model_config = update_config(cls.config_class(), model_values, prefix=f"models.{name}.model.")
    train_config = update_config(TrainConfig(), train_values, prefix=f"models.{name}.train.")
    return ModelPlan(name, model_values, train_values, model_config, train_config, kind)


def check_windows(plans: list[ModelPlan], allow: bool) -> bool:
    """Whether every model that reads a history reads the same window; a
    :class:`ConfigError` naming the windows when they differ and ``allow`` is False."""
    windows: dict[int, list[str]] = {}
    for plan in plans:
        if plan.window is not None:
            windows.setdefault(plan.window, []).append(plan.name)
    if len(windows) <= 1:
        return True
    if not allow:
        shown = "; ".join(f"{', '.join(names)} {w}" for w, names in sorted(windows.items()))
        raise ConfigError(
            f"the models read different history windows (max_his_len, in interactions: "
            f"{shown}); give them the same one (history_window: N in --config, or "
            "--history-window N), or set allow_different_windows: true to compare them anyway "
            "(the table then flags it)")
    return False


def window_stats(data: SRData, table: InstanceTable, window: int) -> dict[str, float]:
    """What a ``window`` of interactions holds on the evaluation instances, on average."""
    rows, events = data.sequences.window_counts(table.user, table.seq, window)
    return {"interactions": window,
            "mean_interactions": round(float(rows.mean()), 2) if len(rows) else 0.0,
            "mean_events": round(float(events.mean()), 2) if len(rows) else 0.0}


def _differences(wanted: dict[str, Any], stored: dict[str, Any], skip: tuple[str, ...] = ()
                 ) -> list[str]:
    keys = sorted((set(wanted) | set(stored)) - set(skip))
    return [k for k in keys if _normal(wanted.get(k)) != _normal(stored.get(k))]


def _normal(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples -> lists, like run.json


def _write_run_yaml(path: Path, model_values: dict[str, Any], train_values: dict[str, Any]
                    ) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"model": _normal(model_values),
                                    "train": _normal(train_values)}, sort_keys=False))


def ensure_run(plan: ModelPlan, seed: int, run_dir: Path, data: SRData, *,
               device: str | None, log: Callable[[str], None], progress: bool = True
               ) -> tuple[str, dict[str, Any]]:
    """Reuse, resume or train the run of ``plan`` with ``seed`` in ``run_dir``;
    ``progress=False`` trains without a progress bar (``train.progress`` only watches).

    Returns (what was done: reused | resumed | trained, run.json)."""
    model_values, train_values = dict(plan.model_values), dict(plan.train_values)
    if not progress:
        train_values["progress"] = False
    if plan.trainable:
        train_values["seed"] = seed
    elif plan.seeded:
        model_values["seed"] = seed
    cls = plan.cls
    wanted_model = dataclasses.asdict(update_config(cls.config_class(), model_values))
    wanted_train = dataclasses.asdict(update_config(TrainConfig(), train_values))
    info = read_run_info(run_dir)
    if info:
        if info.get("model") != plan.kind:
            raise RunError(f"{run_dir} holds a {info.get('model')} run, not {plan.kind}")
        if info.get("data_fingerprint") != data.fingerprint:
            raise RunError(f"{run_dir} was trained on data {info.get('data_fingerprint')}, "
                           f"but {data.path} is {data.fingerprint}: use another --out")
        changed = _differences(wanted_model, info.get("model_config", {}))
        if plan.trainable:
            changed += [f"train.{k}" for k in _differences(
                wanted_train, info.get("train_config", {}), WATCH_ONLY)]
        if changed:
            raise ConfigError(
                f"{run_dir} was run with other settings ({', '.join(changed[:6])}); delete it "
                "or choose another --out to train with the new ones")
        if info.get("status") in FINISHED and (run_dir / "model.json").exists():
            return "reused", info
        if (run_dir / LAST).exists():
            log(f"  resuming the interrupted run in {run_dir} (step {info.get('steps')})")
            quiet = [] if progress else ["train.progress=false"]
            return "resumed", train_run(run_dir, resume=True, sets=quiet, device=device,
                                        log=log)
    if run_dir.exists() and any(run_dir.iterdir()):
        if (run_dir / LAST).exists():
            raise RunError(f"{run_dir} has a checkpoint but no run.json: move it away")
        log(f"  {run_dir} holds a run that never reached a checkpoint: starting it again")
        remove_owned(run_dir, "run", RunError, {"data directory": data.path})
    config_file = run_dir.parent / f"{run_dir.name}.yaml"
    _write_run_yaml(config_file, model_values, train_values)
    info = train_run(run_dir, plan.kind, data.path, config_path=config_file, device=device,
                     log=log)
    return ("trained" if plan.trainable else "built"), info


def evaluation_table(data: SRData, settings: EvalSettings) -> InstanceTable:
    """The evaluation instances every model ranks (one seeded subset for all)."""
    return eval_instances(data, settings.split, max_instances=settings.max_instances,
                          seed=settings.seed, candidates=settings.candidates)


def table_digest(table: InstanceTable) -> str:
    """A short digest of the evaluation instances and their candidates."""
    h = hashlib.sha256()
    for values in (table.user, table.seq, table.candidates, table.target_pos):
        h.update(np.ascontiguousarray(values, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


@dataclass
class RunEval:
    """One run's evaluation: per-task means, and per-instance values of the table metrics
    on ``rows`` (indices into the evaluation table) for the paired tests."""

    metrics: dict[str, Any]
    rows: np.ndarray
    values: dict[str, np.ndarray]
    seconds: float
    cached: bool


def evaluate_for_compare(run_dir: Path, info: dict[str, Any], data: SRData,
                         table: InstanceTable, settings: EvalSettings, *,
                         device: str | None, progress: bool, precision: str = "auto",
                         fast_path: bool = True, digest: str | None = None) -> RunEval:
    """Metrics of the run on ``table`` (cached in ``RUN_DIR/compare_eval[.STRATEGY].json`` for
    the same run state, settings and candidates). GenSR scores in ``precision`` (auto: bf16
    on CUDA) with the fast path unless ``fast_path`` is False."""
    signature = {"settings": dataclasses.asdict(settings),
                 "n_instances": len(table),
                 "candidates": digest or table_digest(table),
                 "run": {k: info.get(k) for k in ("status", "steps", "best_step")},
                 "data_fingerprint": data.fingerprint}
    used = resolve_precision(precision, pick_device(device))
    if info.get("model") == "gensr" and used != "fp32":  # fp32 keeps earlier caches valid
        signature["precision"] = used
    cache = eval_file(run_dir, settings.candidates)
    found = stored_eval(run_dir, settings.candidates)
    if found is not None and found[1] == _normal(signature):
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
    cache.write_text(json.dumps({
        "signature": signature, "metrics": metrics, "time_s": round(seconds, 2),
        "per_instance": {"rows": rows.tolist(), **{m: v.tolist() for m, v in kept.items()}},
    }))
    return RunEval(metrics, rows, kept, seconds, False)


def eval_file(run_dir: Path, strategy: str = DEFAULT_STRATEGY) -> Path:
    """``RUN_DIR/compare_eval[.STRATEGY].json``: where compare caches a run's evaluation."""
    return Path(run_dir) / f"{Path(EVAL_FILE).stem}{strategy_suffix(strategy)}.json"


def stored_eval(run_dir: Path, strategy: str = DEFAULT_STRATEGY
                ) -> tuple[RunEval, dict[str, Any]] | None:
    """The evaluation that ``compare`` cached for the run on ``strategy``'s candidates, with
    its signature (settings, candidates digest, run state), or None if there is none with
    per-instance values."""
    cache = eval_file(run_dir, strategy)
    if not cache.exists():
        return None
    stored = json.loads(cache.read_text())
    if "per_instance" not in stored:
        return None
    per = stored["per_instance"]
    run = RunEval(stored["metrics"], np.asarray(per["rows"], dtype=np.int64),
                  {m: np.asarray(per[m], dtype=np.float64) for m in TABLE_METRICS},
                  float(stored["time_s"]), True)
    return run, stored.get("signature", {})


def summarise(runs: list[dict[str, Any]]) -> tuple[dict[str, dict[str, float]],
                                                   dict[str, dict[str, float]]]:
    """Mean and sample standard deviation (n − 1; 0 for one run) per task and metric."""
    mean: dict[str, dict[str, float]] = {}
    std: dict[str, dict[str, float]] = {}
    tasks = sorted({t for r in runs for t in r["metrics"]})
    for task in tasks:
        mean[task], std[task] = {}, {}
        for name in metric_names(KS):
            values = np.array([r["metrics"][task][name] for r in runs if task in r["metrics"]])
            mean[task][name] = float(values.mean())
            std[task][name] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return mean, std


def seed_means(evals: list[RunEval], task_of_row: np.ndarray
               ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """Per task: each instance's table metrics averaged over a model's runs, and the rows
    (evaluation-table indices) they belong to."""
    rows = evals[0].rows
    if any(not np.array_equal(e.rows, rows) for e in evals):
        raise RunError("the runs of one model were evaluated on different instances")
    values: dict[str, dict[str, np.ndarray]] = {}
    where: dict[str, np.ndarray] = {}
    for task, index in TASK_INDEX.items():
        sel = task_of_row[rows] == index
        if not sel.any():
            continue
        where[task] = rows[sel]
        values[task] = {m: np.mean([e.values[m][sel] for e in evals], axis=0)
                        for m in TABLE_METRICS}
    return values, where


def significance_marks(tests: dict[str, Any], alpha: float) -> dict[str, dict[str, dict[str,
                                                                                         str]]]:
    """model -> task -> metric -> "†" where the reference model differs at p < alpha."""
    marks: dict[str, dict[str, dict[str, str]]] = {}
    for model, per_task in tests.items():
        for task, per_metric in per_task.items():
            for metric, result in per_metric.items():
                if result["p_value"] < alpha:
                    marks.setdefault(model, {}).setdefault(task, {})[metric] = \
                        SIGNIFICANCE_MARK
    return marks


def table_cells(models: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, Cell]]]:
    """Table cells: the value of a single run, (mean, std) over several seeds."""
    cells: dict[str, dict[str, dict[str, Cell]]] = {}
    for name, entry in models.items():
        several = len(entry["runs"]) > 1
        cells[name] = {
            task: {m: ((v, entry["std"][task][m]) if several else v) for m, v in row.items()}
            for task, row in entry["mean"].items()
        }
    return cells


def _fmt_time(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.1f} min"


def _joined(values: list[str]) -> str:
    """"a" when every run agrees, else "a, b, a" (one entry per run)."""
    return values[0] if len(set(values)) == 1 else ", ".join(values)


def runs_markdown(report: dict[str, Any]) -> str:
    """The runs table of compare.md: what ran, on which window and validation subset, how
    long, and why it stopped."""
    lines = ["| model | runs (seeds) | done | window | valid | epochs | steps (best) | stop "
             "| train time | eval time | run dirs |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    windows = report["windows"]
    for name, entry in report["models"].items():
        runs = entry["runs"]
        trained = any(r["trained"] for r in runs)
        seeds = ", ".join(str(r["seed"]) for r in runs)
        done = ", ".join(sorted({r["action"] for r in runs}))
        w = windows.get(name)
        window = f"{w['interactions']} ({w['mean_events']:g} events)" if w else "–"
        dash = "–"
        valid = _joined([str(r["valid_instances"]) if r["trained"] else dash for r in runs])
        epochs = _joined([f"{r['epochs']:g}" if r["trained"] and r["epochs"] is not None
                          else dash for r in runs])
        steps = ", ".join(f"{r['steps']} ({r['best_step']})" if r["trained"] else dash
                          for r in runs)
        stop = _joined([STOP_REASONS.get(r["stop_reason"], str(r["stop_reason"]))
                        if r["trained"] else dash for r in runs])
        train_s = sum(r["train_time_s"] for r in runs)
        eval_s = sum(r["eval_time_s"] for r in runs)
        dirs = ", ".join(f"`{Path(r['run_dir']).relative_to(report['out'])}`" for r in runs)
        lines.append(f"| {name} | {len(runs)} ({seeds}) | {done} | {window} | {valid} | "
                     f"{epochs} | {steps} | {stop} | {_fmt_time(train_s) if trained else dash} "
                     f"| {_fmt_time(eval_s)} | {dirs} |")
    return "\n".join(lines) + "\n"


def significance_markdown(report: dict[str, Any]) -> str:
    """The paired tests of the reference model against every other, one row per model and
    task: the difference (reference − model) of each table metric and its p-value."""
    sig = report["significance"]
    ref = sig["reference"]
    lines = [f"| {ref} vs | task | instances | " + " | ".join(f"Δ{m} (p)" for m in
                                                            TABLE_METRICS) + " |",
             "|---|---|---|" + "---|" * len(TABLE_METRICS)]
    for model, per_task in sig["results"].items():
        for task, per_metric in per_task.items():
            n = next(iter(per_metric.values()))["n"]
            cells = []
            for m in TABLE_METRICS:
                r = per_metric.get(m)
                if r is None:
                    cells.append("–")
                    continue
                mark = SIGNIFICANCE_MARK if r["p_value"] < sig["alpha"] else ""
                cells.append(f"{r['diff']:+.4f} ({_fmt_p(r['p_value'])}){mark}")
            lines.append(f"| {model} | {TASK_NAMES.get(task, task)} | {n:,} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt_p(p: float) -> str:
    return "p < 0.0001" if p < 1e-4 else f"p = {p:.4f}"


def compare_markdown(report: dict[str, Any]) -> str:
    """``compare.md``: the Tables 2–3 layout, the paired tests and the runs."""
    ev = report["eval"]
    n = ev["instances"]
    seeds = report["seeds"]
    strategy = ev["candidates"]
    title = (f"{report['data']['name']}: {ev['split']} split, "
             f"{n.get('rec', 0):,} rec + {n.get('src', 0):,} search instances, "
             f"{ev['n_candidates']} candidates each ({strategy} negatives)")
    sig = report["significance"]
    marks = significance_marks(sig["results"], sig["alpha"]) if sig["results"] else None
    body = [to_markdown(report["cells"], metrics=TABLE_METRICS, title=title, marks=marks)]
    notes = [f"Best value per row in **bold**; – = the model does not serve the task. Ties "
             f"counted as `{ev['ties']}`.",
             f"Candidates `{strategy}`: "
             f"{CANDIDATE_NOTES[strategy].format(n=ev['n_candidates'] - 1)}."]
    if report["n_seeds"] > 1:
        notes.append(f"Mean ± sample standard deviation over seeds {seeds} (models whose "
                     "result does not depend on a seed ran once).")
    total = ev.get("split_instances")
    used = sum(n.values())
    if ev["max_instances"] is not None and total is not None and used < total:
        notes.append(f"A seeded subset ({used:,} of the split's {total:,} instances: "
                     f"eval.max_instances = {ev['max_instances']}, seed {ev['seed']}), the "
                     "same instances for every model.")
    else:
        notes.append(f"Every instance of the {ev['split']} split ({used:,}), the same for "
                     "every model.")
    notes.append(window_note(report))
    if sig["results"]:
        notes.append(f"{SIGNIFICANCE_MARK} = {sig['reference']}'s difference from this model "
                     f"is significant (p < {sig['alpha']:g}, two-sided paired {sig['test']} "
                     "over the shared instances of the task, each instance's metric averaged "
                     "over seeds; no multiple-comparison correction).")
    elif sig["skipped"]:
        notes.append(f"No significance tests: {sig['skipped']}.")
    validation = report["validation"]
    if validation is not None:
        notes.append(f"Every trained model early-stops on the same validation subset: "
                     f"{validation['max_instances']:,} valid instances (seed "
                     f"{validation['seed']}), each model keeping those of its tasks.")
    else:
        notes.append("Validation subsets are each model's own train settings (see *valid*; "
                     "set `validation:` in the config to share one).")
    body.append("\n".join(notes) + "\n")
    if sig["results"]:
        body.append(f"## {sig['reference']} against each model\n")
        body.append(significance_markdown(report))
    body.append("## Runs\n")
    body.append(runs_markdown(report))
    body.append("*window* = `max_his_len` interactions of the canonical log (every model "
                "counts its history in these rows); in brackets the mean number of past events "
                "they hold on the evaluated instances (a purchase's rec and src twins are one "
                "event). *valid* = validation instances; *stop* = why training ended.\n")
    cf = report.get("cf")
    extra = []
    if cf:
        extra.append(f"CF table: `{cf['path']}`"
                     + (f" (pretrained by compare in {_fmt_time(cf['time_s'])})"
                        if cf.get("pretrained_here") else ""))
    extra.append(f"Data `{report['data']['dir']}`, fingerprint `{report['data']['fingerprint']}`"
                 f", candidates `{strategy}` (digest `{ev['candidates_digest']}`); total "
                 f"{_fmt_time(report['total_time_s'])} on {report['device']}.")
    body.append("\n".join(extra) + "\n")
    return "\n".join(body)


def window_note(report: dict[str, Any]) -> str:
    """One line: the history window every model read, or a flag when they differ."""
    windows = report["windows"]
    if not windows:
        return "No model reads a history."
    by_window: dict[int, list[str]] = {}
    for name, w in windows.items():
        by_window.setdefault(w["interactions"], []).append(name)
    if len(by_window) == 1:
        (w, names), = by_window.items()
        stats = next(iter(windows.values()))
        return (f"History window: every model reads the last {w} interactions "
                f"(≈ {stats['mean_events']:g} past events on these instances).")
    shown = "; ".join(f"{', '.join(names)}: {w} interactions "
                      f"(≈ {windows[names[0]]['mean_events']:g} events)"
                      for w, names in sorted(by_window.items()))
    return (f"**Different history windows** (allow_different_windows: true): {shown}. The "
            "models did not read the same past.")


def _ensure_cf(plans: list[ModelPlan], config: CompareConfig, data: SRData, out: Path, *,
               device: str | None, log: Callable[[str], None]) -> dict[str, Any] | None:
    """Pretrain (or reuse) ``OUT/cf.safetensors`` for the models that need a CF table."""
    needing = [p for p in plans if p.needs_cf]
    if not needing:
        return None
    from gensr.cf import CFTable, pretrain_cf

    path = (out / CF_FILE).resolve()
    record: dict[str, Any] = {"path": str(path), "pretrained_here": False, "time_s": 0.0}
    if path.exists():
        CFTable.load(path, data)  # refuses a table of other data
        log(f"CF table: reusing {path}")
    else:
        names = ", ".join(p.name for p in needing)
        log(f"CF table: none given (--cf) for {names}: pretraining LightGCN into {path}")
        start = time.time()
        card = pretrain_cf(data, path, device=device, progress=False, **config.cf)
        record.update(pretrained_here=True, time_s=round(time.time() - start, 2),
                      valid=card.get("valid"))
    for plan in needing:
        plan.model_values["cf_path"] = str(path)
        plan.model_config = update_config(plan.model_config, {"cf_path": str(path)})
    return record


def _servable(names: list[str], plans: list[ModelPlan], data: SRData, table: InstanceTable,
              split: str, log: Callable[[str], None]) -> tuple[list[str], list[ModelPlan]]:
    """The models that can serve at least one task the data has instances of (a warning
    names each task a split lacks, and each model left out for it)."""
    evaluated = set(tasks_present(table))
    if not evaluated:
        raise DataError(f"{data.path}: the {split} split has no evaluation instances")
    trained = set(data.train()["behaviour"].unique().to_list())
    validated = set(data.candidates("valid")["task"].unique().to_list())
    for task in TASK_INDEX:
        for where, present in ((f"{split} split", evaluated), ("training split", trained),
                               ("valid split", validated)):
            if task not in present and any(task in p.cls.tasks for p in plans):
                what = "interactions" if where == "training split" else "instances"
                log(f"warning: the {where} has no {task} {what}")
    kept: list[tuple[str, ModelPlan]] = []
    for name, plan in zip(names, plans):
        usable = evaluated & set(plan.cls.tasks)
        if plan.trainable:
            usable &= trained & validated
        if usable:
            kept.append((name, plan))
        else:
            log(f"warning: {name} serves only {', '.join(plan.cls.tasks)}, which the "
                "data cannot train or evaluate: left out")
    if not kept:
        raise DataError(f"{data.path}: none of the models {names} can be trained and "
                        "evaluated on these data (see the warnings)")
    return [n for n, _ in kept], [p for _, p in kept]


def compare(
    data_dir: str | Path,
    models: str | list[str] | tuple[str, ...] = DEFAULT_MODELS,
    out: str | Path = "runs/compare",
    *,
    config_path: str | Path | None = None,
    cf_path: str | Path | None = None,
    seeds: int | list[int] | None = None,
    max_instances: int | None = None,
    candidates: str | None = None,
    history_window: int | None = None,
    device: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    console: Any = None,
    precision: str = "auto",
    fast_path: bool = True,
) -> dict[str, Any]:
    """Train (or reuse), evaluate and tabulate ``models`` on ``data_dir``; see the module.

    ``seeds``: N (seeds train.seed … train.seed + N − 1) or a list, over the config's
    ``seeds``; ``max_instances``, ``candidates`` and ``history_window`` override the config's
    ``eval.max_instances``, ``eval.candidates`` and ``history_window``.
    ``precision``/``fast_path``: how GenSR scores (:func:`gensr.runs.prepare_inference`).

    Returns the report written to ``OUT/compare[.STRATEGY].json``."""
    started = time.time()
    resolve_precision(precision, pick_device(device))  # a bad value fails before any training
    if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    config = load_compare_config(config_path)
    names = parse_models(models, config.variants)
    if max_instances is not None:
        config.eval = dataclasses.replace(config.eval, max_instances=max_instances)
    if candidates is not None:
        config.eval = dataclasses.replace(config.eval, candidates=candidates)
    if history_window is not None:
        if history_window < 1:
            raise ConfigError(f"--history-window must be >= 1, got {history_window}")
        config.history_window = history_window
    explicit_seeds = (parse_seeds(seeds, "--seeds") if isinstance(seeds, (list, tuple))
                      else None if seeds is not None else config.seeds)
    n_seeds = seeds if isinstance(seeds, int) else 1
    cf = None
    if cf_path is not None:
        cf = Path(cf_path).resolve()
        if not cf.exists():
            raise ConfigError(f"--cf: {cf_path} does not exist")
    check_output_path(out, ConfigError)
    out = Path(out).resolve()
    data = load_data(data_dir)
    plans = [plan_model(n, config, cf) for n in names]  # every setting checked up front
    same_window = check_windows(plans, config.allow_different_windows)
    table = evaluation_table(data, config.eval)  # a missing candidates file fails here
    names, plans = _servable(names, plans, data, table, config.eval.split, log)
    digest = table_digest(table)
    make_dir(out, ConfigError)
    cf_record = _ensure_cf(plans, config, data, out, device=device, log=log)
    if cf is not None:
        cf_record = {"path": str(cf), "pretrained_here": False, "time_s": 0.0}
    counts = {t: int((table.task == i).sum()) for t, i in TASK_INDEX.items()}
    strategy = config.eval.candidates
    log(f"compare {len(names)} models on {data.name} ({config.eval.split}: "
        f"{counts['rec']:,} rec + {counts['src']:,} search instances, {strategy} candidates) "
        f"-> {out}")
    windows = {p.name: window_stats(data, table, p.window) for p in plans
               if p.window is not None}
    if not same_window:
        log("warning: the models read different history windows "
            "(allow_different_windows: true); the table flags it")

    report_models: dict[str, dict[str, Any]] = {}
    seed_values: dict[str, tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]] = {}
    all_seeds: set[int] = set()
    for k, (name, plan) in enumerate(zip(names, plans)):
        base = plan.train_config.seed if plan.trainable else getattr(plan.model_config, "seed", 0)
        if not plan.seeded:
            model_seeds = [base]
        elif seeds is None and name in config.model_seeds:
            model_seeds = list(config.model_seeds[name])
        elif explicit_seeds is not None:
            model_seeds = list(explicit_seeds)
        else:
            model_seeds = [base + s for s in range(n_seeds)]
        all_seeds.update(model_seeds)
        runs, evals = [], []
        for seed in model_seeds:
            run_dir = out / name / f"seed{seed}"
            log(f"[{k + 1}/{len(names)}] {name} seed {seed}: {run_dir}")
            action, info = ensure_run(plan, seed, run_dir, data, device=device, log=log,
                                      progress=progress)
            ev = evaluate_for_compare(run_dir, info, data, table, config.eval, device=device,
                                      progress=progress, precision=precision,
                                      fast_path=fast_path, digest=digest)
            evals.append(ev)
            trained = bool(info.get("trained"))
            train_s = float(info.get("wall_time_s") or 0.0)
            shown = "  ".join(f"{t} R@10 {m['R@10']:.4f} N@10 {m['N@10']:.4f}"
                              for t, m in ev.metrics.items())
            reason = stop_reason(info)
            log(f"  {action}"
                + (f" (train {_fmt_time(train_s)}, {info.get('steps')} steps, "
                   f"{STOP_REASONS.get(reason or '', reason)})" if trained else "")
                + f", evaluated in {_fmt_time(ev.seconds)}{' (cached)' if ev.cached else ''}: "
                + shown)
            runs.append({"seed": seed, "run_dir": str(run_dir), "action": action,
                         "status": info.get("status"), "trained": trained,
                         "steps": info.get("steps"), "best_step": info.get("best_step"),
                         "epochs": info.get("epochs"), "stop_reason": reason,
                         "valid_instances": info.get("valid_instances"),
                         "train_time_s": round(train_s, 2), "eval_time_s": round(ev.seconds, 2),
                         "eval_cached": ev.cached, "metrics": ev.metrics})
        mean, std = summarise(runs)
        seed_values[name] = seed_means(evals, table.task)
        report_models[name] = {"tasks": list(plan.cls.tasks), "model": plan.kind,
                               "trainable": plan.trainable, "seeds": model_seeds,
                               "history_window": windows.get(name),
                               "runs": runs, "mean": mean, "std": std}

    sig = config.significance
    significance: dict[str, Any] = {**dataclasses.asdict(sig), "results": {}, "skipped": None,
                                    "values": "per-instance metric averaged over seeds"}
    if sig.reference not in names:
        significance["skipped"] = f"the reference model {sig.reference!r} is not compared"
    elif len(names) < 2:
        significance["skipped"] = "only one model"
    else:
        significance["results"] = compare_to_reference(
            {n: v[0] for n, v in seed_values.items()}, {n: v[1] for n, v in seed_values.items()},
            sig.reference, sig.test, n_boot=sig.n_boot, seed=sig.seed)  # type: ignore[arg-type]

    report: dict[str, Any] = {
        "out": str(out),
        "data": {"dir": str(Path(data.path).resolve()), "name": data.name,
                 "fingerprint": data.fingerprint},
        "eval": {**dataclasses.asdict(config.eval), "instances": counts,
                 "split_instances": data.candidates(config.eval.split).height,
                 "n_candidates": int(table.candidates.shape[1]) if len(table) else 0,
                 "candidates_digest": digest},
        "n_seeds": max(len(m["seeds"]) for m in report_models.values()),
        "seeds": sorted(all_seeds),
        "windows": windows,
        "windows_equal": same_window,
        "allow_different_windows": config.allow_different_windows,
        "validation": (dataclasses.asdict(config.validation) if config.validation is not None
                       else None),
        "significance": significance,
        "models": report_models,
        "cf": cf_record,
        "config_file": str(Path(config_path).resolve()) if config_path else None,
        "table_metrics": list(TABLE_METRICS),
        "device": str(pick_device(device)),
        "gensr_scoring": {"precision": resolve_precision(precision, pick_device(device)),
                          "fast_path": fast_path},
        "torch": torch.__version__,
        "gensr": gensr.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    report["cells"] = table_cells(report_models)
    report["total_time_s"] = round(time.time() - started, 2)
    suffix = strategy_suffix(strategy)
    md_path, json_path = out / f"compare{suffix}.md", out / f"compare{suffix}.json"
    md_path.write_text(compare_markdown(report))
    serialisable = {k: v for k, v in report.items() if k != "cells"}
    json_path.write_text(json.dumps(serialisable, indent=2))
    write_instances(out / f"compare_instances{suffix}.parquet", table, seed_values)
    if console is not None:  # the Markdown table: never truncated, whatever the width
        marks = (significance_marks(significance["results"], sig.alpha)
                 if significance["results"] else None)
        console.print(to_markdown(report["cells"], metrics=TABLE_METRICS, marks=marks),
                      markup=False, highlight=False, soft_wrap=True)
    log(f"wrote {md_path} and {json_path} ({_fmt_time(report['total_time_s'])})")
    return report


def write_instances(path: Path, table: InstanceTable,
                    seed_values: dict[str, tuple[dict[str, dict[str, np.ndarray]],
                                                 dict[str, np.ndarray]]]) -> None:
    """Every evaluated instance with each model's table metrics (mean over its seeds; null
    where the model does not serve the task): the input of the paired tests."""
    columns: dict[str, Any] = {
        "row": np.arange(len(table), dtype=np.int64),
        "user_id": table.user, "seq": table.seq,
        "task": np.where(table.task == TASK_INDEX["rec"], "rec", "src"),
    }
    for name, (values, rows) in seed_values.items():
        for metric in TABLE_METRICS:
            col = np.full(len(table), np.nan)
            for task, where in rows.items():
                col[where] = values[task][metric]
            columns[f"{name}/{metric}"] = col
    pl.DataFrame(columns).with_columns(
        [pl.col(c).fill_nan(None) for c in columns if "/" in c]).write_parquet(path)
