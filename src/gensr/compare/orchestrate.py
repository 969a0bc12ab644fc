"""``gensr compare``'s orchestration: plan every model, make sure each run exists (trained,
resumed or reused, :mod:`gensr.reuse`), evaluate each on the same instances, test, report."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import gensr
from gensr.compare.config import (
    CompareConfig,
    ModelPlan,
    check_windows,
    load_compare_config,
    parse_models,
    parse_seeds,
    plan_model,
    window_stats,
)
from gensr.compare.report import (
    _fmt_time,
    compare_markdown,
    seed_means,
    seed_stacks,
    significance_marks,
    summarise,
    table_cells,
    write_instances,
)
from gensr.config import update_config
from gensr.data.batching import TASK_INDEX, InstanceTable, tasks_present
from gensr.data.dataset import SRData, load_data
from gensr.errors import ConfigError, DataError
from gensr.eval.significance import compare_to_reference
from gensr.eval.tables import TABLE_METRICS, to_markdown
from gensr.outputs import check_output_path, make_dir
from gensr.reuse import (
    ensure_cf_table,
    ensure_run,
    evaluate_run,
    evaluation_table,
    strategy_suffix,
    table_digest,
)
from gensr.runs import STOP_REASONS, RunInfo, pick_device, resolve_precision

DEFAULT_MODELS = ("gensr", "unisar", "sasrec", "tem", "disc", "pop", "bm25")


CF_FILE = "cf.safetensors"


def _ensure_cf(plans: list[ModelPlan], config: CompareConfig, data: SRData, out: Path, *,
               device: str | None, log: Callable[[str], None]) -> dict[str, Any] | None:
    """Pretrain (or reuse) ``OUT/cf.safetensors`` for the models that need a CF table."""
    needing = [p for p in plans if p.needs_cf]
    if not needing:
        return None
    path = (out / CF_FILE).resolve()
    if not path.exists():
        log(f"CF table: none given (--cf) for {', '.join(p.name for p in needing)}")
    start = time.time()
    _, card = ensure_cf_table(path, data, settings=config.cf, device=device, log=log)
    record: dict[str, Any] = {"path": str(path), "pretrained_here": card is not None,
                              "time_s": round(time.time() - start, 2) if card else 0.0}
    if card is not None:
        record["valid"] = card.get("valid")
    for plan in needing:
        plan.model_values["cf_path"] = str(path)
        plan.model_config = update_config(plan.model_config, {"cf_path": str(path)})
    return record


def run_plan(plan: ModelPlan, seed: int, run_dir: Path, data: SRData, *,
             device: str | None, log: Callable[[str], None], progress: bool = True
             ) -> tuple[str, RunInfo]:
    """Reuse, resume or train ``plan``'s run with ``seed`` in ``run_dir``
    (:func:`gensr.reuse.ensure_run`: the seed goes to ``train.seed``, or for a seeded
    untrained model such as ``random`` to its config's ``seed``)."""
    model_values, train_values = dict(plan.model_values), dict(plan.train_values)
    if plan.trainable:
        train_values["seed"] = seed
    elif plan.seeded:
        model_values["seed"] = seed
    return ensure_run(run_dir, plan.kind, model_values, train_values, data, device=device,
                      log=log, progress=progress)


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
    per_seed: dict[str, dict[str, dict[str, np.ndarray]]] = {}
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
            action, info = run_plan(plan, seed, run_dir, data, device=device, log=log,
                                    progress=progress)
            ev = evaluate_run(run_dir, info, data, table, config.eval, device=device,
                              progress=progress, precision=precision, fast_path=fast_path,
                              digest=digest)
            evals.append(ev)
            trained = info.trained
            train_s = float(info.wall_time_s or 0.0)
            shown = "  ".join(f"{t} R@10 {m['R@10']:.4f} N@10 {m['N@10']:.4f}"
                              for t, m in ev.metrics.items())
            reason = info.why_stopped
            log(f"  {action}"
                + (f" (train {_fmt_time(train_s)}, {info.steps} steps, "
                   f"{STOP_REASONS.get(reason or '', reason)})" if trained else "")
                + f", evaluated in {_fmt_time(ev.seconds)}{' (cached)' if ev.cached else ''}: "
                + shown)
            runs.append({"seed": seed, "run_dir": str(run_dir), "action": action,
                         "status": info.status, "trained": trained,
                         "steps": info.steps, "best_step": info.best_step,
                         "epochs": info.epochs, "stop_reason": reason,
                         "valid_instances": info.valid_instances,
                         "train_time_s": round(train_s, 2), "eval_time_s": round(ev.seconds, 2),
                         "eval_cached": ev.cached, "metrics": ev.metrics})
        mean, std = summarise(runs)
        seed_values[name] = seed_means(evals, table.task)
        per_seed[name] = seed_stacks(evals, table.task)
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
            sig.reference, sig.test, n_boot=sig.n_boot, seed=sig.seed,  # type: ignore[arg-type]
            per_seed=per_seed if sig.seed_aware else None)

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
