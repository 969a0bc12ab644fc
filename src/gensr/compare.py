"""``gensr compare``: train what needs training, evaluate every model on the same candidates,
write the paper's Tables 2–3 layout.

For each model in ``--models`` and each seed, the run directory ``OUT/MODEL/seedS`` is

* **reused** when it holds a finished run (``run.json`` with status finished, early_stopped
  or not trainable) trained with the same settings — nothing is retrained;
* **resumed** when it holds an interrupted run (a ``last/`` checkpoint);
* **trained** (through :func:`gensr.train.train_run`, the shared trainer) otherwise.

Every model then ranks the same stored candidates of the same evaluation instances (one
seeded subset for all when ``eval.max_instances`` is set) with :func:`evaluate_table`; a model
skips the tasks it does not serve ("–" in the table). ``OUT/compare.md`` holds the table
(rows = R@5 N@5 R@10 N@10 per task, columns = models, best in bold; mean ± std over seeds)
and the runs; ``OUT/compare.json`` the metrics of every run, seeds, run directories, train and
evaluation times and the data fingerprint.

The YAML file (``--config``)::

    defaults:
      train: {...}            # TrainConfig fields for every trained model
    models:
      NAME:                   # a registered model name; entries not in --models are ignored
        model: {...}          # fields of the model's config class
        train: {...}          # TrainConfig fields, over the defaults
    eval:
      max_instances: null     # seeded subset of the split's instances, the same for all models
      batch_size: 64
      ties: expected          # expected | pessimistic | optimistic
      seed: 0                 # the subset's seed
    cf: {...}                 # gensr pretrain-cf settings, used when compare pretrains the table
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

import gensr
from gensr.config import load_yaml, update_config
from gensr.data.batching import TASK_INDEX, InstanceTable, eval_instances, tasks_present
from gensr.data.dataset import SRData, load_data
from gensr.errors import ConfigError, DataError, RunError
from gensr.eval.metrics import KS, metric_names
from gensr.eval.protocol import evaluate_table
from gensr.eval.tables import TABLE_METRICS, Cell, to_markdown
from gensr.models.base import ModelConfig
from gensr.models.registry import MODELS, model_class
from gensr.outputs import check_output_path, make_dir, remove_owned
from gensr.runs import load_run, pick_device, prepare_inference, read_run_info, resolve_precision
from gensr.train import TrainConfig, train_run
from gensr.train.checkpoint import LAST

DEFAULT_MODELS = ("gensr", "unisar", "sasrec", "tem", "disc", "pop", "bm25")
FINISHED = ("finished", "early_stopped", "not trainable")
# train settings that change how a run is watched, not what it learns: ignored on reuse
WATCH_ONLY = ("progress", "device", "log_every", "eval_batch_size", "precision")
TOP_KEYS = ("defaults", "models", "eval", "cf")
CF_FILE = "cf.safetensors"
EVAL_FILE = "compare_eval.json"


@dataclass
class EvalSettings:
    """How ``compare`` evaluates: the same for every model."""

    split: str = "test"
    max_instances: int | None = None  # seeded subset of the split's instances (None: all)
    batch_size: int = 64
    ties: str = "expected"
    seed: int = 0

    def __post_init__(self) -> None:
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
class CompareConfig:
    """The parsed ``--config`` file (see the module docstring)."""

    default_train: dict[str, Any] = field(default_factory=dict)
    models: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    eval: EvalSettings = field(default_factory=EvalSettings)
    cf: dict[str, Any] = field(default_factory=dict)


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
    for name, entry in _mapping(doc.get("models"), f"{path}: models").items():
        if name not in MODELS:
            raise ConfigError(f"{path}: models.{name}: unknown model; available: "
                              f"{', '.join(MODELS)}")
        entry = _mapping(entry, f"{path}: models.{name}")
        bad = sorted(set(entry) - {"model", "train"})
        if bad:
            raise ConfigError(f"{path}: models.{name}: unknown key(s) {bad}; expected "
                              "'model:' and 'train:'")
        models[name] = {s: dict(_mapping(entry.get(s), f"{path}: models.{name}.{s}"))
                        for s in ("model", "train")}
    settings = update_config(EvalSettings(), _mapping(doc.get("eval"), f"{path}: eval"),
                             prefix="eval.")
    return CompareConfig(default_train=dict(_mapping(defaults.get("train"),
                                                     f"{path}: defaults.train")),
                         models=models, eval=settings,
                         cf=dict(_mapping(doc.get("cf"), f"{path}: cf")))


def parse_models(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"gensr,unisar"`` -> ``["gensr", "unisar"]``, checked against the registry."""
    names = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    if not names:
        raise ConfigError("--models names no model")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise ConfigError(f"--models: unknown model(s) {unknown}; available: "
                          f"{', '.join(MODELS)}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"--models lists {dupes} more than once")
    return names


@dataclass
class ModelPlan:
    """One model's settings as compare will train it (before the seed is applied)."""

    name: str
    model_values: dict[str, Any]
    train_values: dict[str, Any]
    model_config: ModelConfig
    train_config: TrainConfig

    @property
    def trainable(self) -> bool:
        return model_class(self.name).trainable

    @property
    def seeded(self) -> bool:
        """Whether seeds change the result (trained models, and `random` via its seed)."""
        return self.trainable or "seed" in _field_names(type(self.model_config))

    @property
    def needs_cf(self) -> bool:
        cfg = self.model_config
        return ("cf_path" in _field_names(type(cfg))
                and not getattr(cfg, "cf_path")  # noqa: B009 - not every config has it
                and getattr(cfg, "use_cf_view", True))


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def plan_model(name: str, config: CompareConfig, cf_path: Path | None) -> ModelPlan:
    """The model and train settings of ``name`` (YAML defaults < model entry < ``--cf``)."""
    cls = model_class(name)
    entry = config.models.get(name, {"model": {}, "train": {}})
    model_values = dict(entry["model"])
    train_values = {**config.default_train, **entry["train"]}
    if cf_path is not None and "cf_path" in _field_names(cls.config_class):
        model_values["cf_path"] = str(cf_path)
    model_config = update_config(cls.config_class(), model_values, prefix=f"models.{name}.model.")
    train_config = update_config(TrainConfig(), train_values, prefix=f"models.{name}.train.")
    return ModelPlan(name, model_values, train_values, model_config, train_config)


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
               device: str | None, log: Callable[[str], None]) -> tuple[str, dict[str, Any]]:
    """Reuse, resume or train the run of ``plan`` with ``seed`` in ``run_dir``.

    Returns (what was done: reused | resumed | trained, run.json)."""
    model_values, train_values = dict(plan.model_values), dict(plan.train_values)
    if plan.trainable:
        train_values["seed"] = seed
    elif plan.seeded:
        model_values["seed"] = seed
    cls = model_class(plan.name)
    wanted_model = dataclasses.asdict(update_config(cls.config_class(), model_values))
    wanted_train = dataclasses.asdict(update_config(TrainConfig(), train_values))
    info = read_run_info(run_dir)
    if info:
        if info.get("model") != plan.name:
            raise RunError(f"{run_dir} holds a {info.get('model')} run, not {plan.name}")
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
            return "resumed", train_run(run_dir, resume=True, device=device, log=log)
    if run_dir.exists() and any(run_dir.iterdir()):
        if (run_dir / LAST).exists():
            raise RunError(f"{run_dir} has a checkpoint but no run.json: move it away")
        log(f"  {run_dir} holds a run that never reached a checkpoint: starting it again")
        remove_owned(run_dir, "run", RunError, {"data directory": data.path})
    config_file = run_dir.parent / f"{run_dir.name}.yaml"
    _write_run_yaml(config_file, model_values, train_values)
    info = train_run(run_dir, plan.name, data.path, config_path=config_file, device=device,
                     log=log)
    return ("trained" if plan.trainable else "built"), info


def evaluation_table(data: SRData, settings: EvalSettings) -> InstanceTable:
    """The evaluation instances every model ranks (one seeded subset for all)."""
    return eval_instances(data, settings.split, max_instances=settings.max_instances,
                          seed=settings.seed)


def evaluate_for_compare(run_dir: Path, info: dict[str, Any], data: SRData,
                         table: InstanceTable, settings: EvalSettings, *,
                         device: str | None, progress: bool, precision: str = "auto",
                         fast_path: bool = True) -> tuple[dict[str, Any], float, bool]:
    """Metrics of the run on ``table`` (cached in ``RUN_DIR/compare_eval.json`` for the same
    run state and settings). GenSR scores in ``precision`` (auto: bf16 on CUDA) with the
    fast path unless ``fast_path`` is False. Returns (metrics, seconds, cached)."""
    signature = {"settings": dataclasses.asdict(settings),
                 "n_instances": len(table),
                 "run": {k: info.get(k) for k in ("status", "steps", "best_step")},
                 "data_fingerprint": data.fingerprint}
    used = resolve_precision(precision, pick_device(device))
    if info.get("model") == "gensr" and used != "fp32":  # fp32 keeps earlier caches valid
        signature["precision"] = used
    cache = run_dir / EVAL_FILE
    if cache.exists():
        stored = json.loads(cache.read_text())
        if stored.get("signature") == _normal(signature):
            return stored["metrics"], float(stored["time_s"]), True
    start = time.time()
    model, _ = load_run(run_dir, data, device)
    prepare_inference(model, precision, fast_path)
    keep = np.isin(table.task, [TASK_INDEX[t] for t in model.tasks])
    metrics = evaluate_table(model, data, table.subset(np.nonzero(keep)[0]),
                             batch_size=settings.batch_size, ties=settings.ties,  # type: ignore[arg-type]
                             progress=progress, desc=f"{model.name} {settings.split}")
    seconds = time.time() - start
    cache.write_text(json.dumps({"signature": signature, "metrics": metrics,
                                 "time_s": round(seconds, 2)}, indent=2))
    return metrics, seconds, False


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


def runs_markdown(report: dict[str, Any]) -> str:
    """The runs table of compare.md: what ran, for how long, where."""
    lines = ["| model | runs (seeds) | done | steps (best) | train time | eval time | run dirs |",
             "|---|---|---|---|---|---|---|"]
    for name, entry in report["models"].items():
        runs = entry["runs"]
        seeds = ", ".join(str(r["seed"]) for r in runs)
        done = ", ".join(sorted({r["action"] for r in runs}))
        steps = ", ".join(f"{r['steps']} ({r['best_step']})" if r["trained"] else "–"
                          for r in runs)
        train_s = sum(r["train_time_s"] for r in runs)
        eval_s = sum(r["eval_time_s"] for r in runs)
        dirs = ", ".join(f"`{Path(r['run_dir']).relative_to(report['out'])}`" for r in runs)
        lines.append(f"| {name} | {len(runs)} ({seeds}) | {done} | {steps} | "
                     f"{_fmt_time(train_s) if any(r['trained'] for r in runs) else '–'} | "
                     f"{_fmt_time(eval_s)} | {dirs} |")
    return "\n".join(lines) + "\n"


def compare_markdown(report: dict[str, Any]) -> str:
    """``compare.md``: the Tables 2–3 layout and the runs."""
    ev = report["eval"]
    n = ev["instances"]
    seeds = report["seeds"]
    title = (f"{report['data']['name']}: {ev['split']} split, "
             f"{n.get('rec', 0):,} rec + {n.get('src', 0):,} search instances, "
             f"100 candidates each")
    body = [to_markdown(report["cells"], metrics=TABLE_METRICS, title=title)]
    notes = [f"Best value per row in **bold**; – = the model does not serve the task. Ties "
             f"counted as `{ev['ties']}`."]
    if report["n_seeds"] > 1:
        notes.append(f"Mean ± sample standard deviation over seeds {seeds} (models whose "
                     "result does not depend on a seed ran once).")
    if ev["max_instances"] is not None:
        notes.append(f"A seeded subset (eval.max_instances = {ev['max_instances']}, seed "
                     f"{ev['seed']}) of the split, the same instances for every model.")
    body.append("\n".join(notes) + "\n")
    body.append("## Runs\n")
    body.append(runs_markdown(report))
    cf = report.get("cf")
    extra = []
    if cf:
        extra.append(f"CF table: `{cf['path']}`"
                     + (f" (pretrained by compare in {_fmt_time(cf['time_s'])})"
                        if cf.get("pretrained_here") else ""))
    extra.append(f"Data `{report['data']['dir']}`, fingerprint `{report['data']['fingerprint']}`"
                 f"; total {_fmt_time(report['total_time_s'])} on {report['device']}.")
    body.append("\n".join(extra) + "\n")
    return "\n".join(body)


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
            if task not in present and any(task in model_class(n).tasks for n in names):
                what = "interactions" if where == "training split" else "instances"
                log(f"warning: the {where} has no {task} {what}")
    kept: list[tuple[str, ModelPlan]] = []
    for name, plan in zip(names, plans):
        usable = evaluated & set(model_class(name).tasks)
        if plan.trainable:
            usable &= trained & validated
        if usable:
            kept.append((name, plan))
        else:
            log(f"warning: {name} serves only {', '.join(model_class(name).tasks)}, which the "
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
    seeds: int = 1,
    max_instances: int | None = None,
    device: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    console: Any = None,
    precision: str = "auto",
    fast_path: bool = True,
) -> dict[str, Any]:
    """Train (or reuse), evaluate and tabulate ``models`` on ``data_dir``; see the module.
    ``precision``/``fast_path``: how GenSR scores (:func:`gensr.runs.prepare_inference`).

    Returns the report written to ``OUT/compare.json``."""
    started = time.time()
    names = parse_models(models)
    resolve_precision(precision, pick_device(device))  # a bad value fails before any training
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    config = load_compare_config(config_path)
    if max_instances is not None:
        config.eval = dataclasses.replace(config.eval, max_instances=max_instances)
    cf = None
    if cf_path is not None:
        cf = Path(cf_path).resolve()
        if not cf.exists():
            raise ConfigError(f"--cf: {cf_path} does not exist")
    check_output_path(out, ConfigError)
    out = Path(out).resolve()
    data = load_data(data_dir)
    plans = [plan_model(n, config, cf) for n in names]  # every setting checked up front
    table = evaluation_table(data, config.eval)
    names, plans = _servable(names, plans, data, table, config.eval.split, log)
    make_dir(out, ConfigError)
    cf_record = _ensure_cf(plans, config, data, out, device=device, log=log)
    if cf is not None:
        cf_record = {"path": str(cf), "pretrained_here": False, "time_s": 0.0}
    counts = {t: int((table.task == i).sum()) for t, i in TASK_INDEX.items()}
    log(f"compare {len(names)} models on {data.name} ({config.eval.split}: "
        f"{counts['rec']:,} rec + {counts['src']:,} search instances) -> {out}")

    report_models: dict[str, dict[str, Any]] = {}
    all_seeds: set[int] = set()
    for k, (name, plan) in enumerate(zip(names, plans)):
        base = plan.train_config.seed if plan.trainable else getattr(plan.model_config, "seed", 0)
        model_seeds = [base + s for s in range(seeds)] if plan.seeded else [base]
        all_seeds.update(model_seeds)
        runs = []
        for seed in model_seeds:
            run_dir = out / name / f"seed{seed}"
            log(f"[{k + 1}/{len(names)}] {name} seed {seed}: {run_dir}")
            action, info = ensure_run(plan, seed, run_dir, data, device=device, log=log)
            metrics, eval_s, cached = evaluate_for_compare(run_dir, info, data, table,
                                                           config.eval, device=device,
                                                           progress=progress,
                                                           precision=precision,
                                                           fast_path=fast_path)
            trained = bool(info.get("trained"))
            train_s = float(info.get("wall_time_s") or 0.0)
            shown = "  ".join(f"{t} R@10 {m['R@10']:.4f} N@10 {m['N@10']:.4f}"
                              for t, m in metrics.items())
            log(f"  {action}"
                + (f" (train {_fmt_time(train_s)}, {info.get('steps')} steps)" if trained else "")
                + f", evaluated in {_fmt_time(eval_s)}{' (cached)' if cached else ''}: {shown}")
            runs.append({"seed": seed, "run_dir": str(run_dir), "action": action,
                         "status": info.get("status"), "trained": trained,
                         "steps": info.get("steps"), "best_step": info.get("best_step"),
                         "train_time_s": round(train_s, 2), "eval_time_s": round(eval_s, 2),
                         "eval_cached": cached, "metrics": metrics})
        mean, std = summarise(runs)
        report_models[name] = {"tasks": list(model_class(name).tasks),
                               "trainable": plan.trainable, "seeds": model_seeds,
                               "runs": runs, "mean": mean, "std": std}

    report: dict[str, Any] = {
        "out": str(out),
        "data": {"dir": str(Path(data.path).resolve()), "name": data.name,
                 "fingerprint": data.fingerprint},
        "eval": {**dataclasses.asdict(config.eval), "instances": counts},
        "n_seeds": seeds,
        "seeds": sorted(all_seeds),
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
    (out / "compare.md").write_text(compare_markdown(report))
    serialisable = {k: v for k, v in report.items() if k != "cells"}
    (out / "compare.json").write_text(json.dumps(serialisable, indent=2))
    if console is not None:  # the Markdown table: never truncated, whatever the width
        console.print(to_markdown(report["cells"], metrics=TABLE_METRICS), markup=False,
                      highlight=False, soft_wrap=True)
    log(f"wrote {out / 'compare.md'} and {out / 'compare.json'} "
        f"({_fmt_time(report['total_time_s'])})")
    return report

