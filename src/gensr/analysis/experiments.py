"""``gensr analyze sweep`` (Fig. 5) and ``gensr analyze ablate`` (Fig. 4): train a model per
setting with the shared trainer (:func:`gensr.train.train_run`), evaluate each best model on
the test split with the one protocol (:func:`gensr.eval.evaluate`), plot R@5 and N@5 per task.

Every run lives in ``OUT/runs/<setting>/seed<k>/`` (its settings in ``seed<k>.yaml`` beside
it); running the command again reuses a finished run with the same settings and its cached
evaluation (:mod:`gensr.reuse`, the rules ``gensr compare`` follows), so a sweep can be
extended value by value and a figure redrawn cheaply; a folder trained otherwise is refused.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gensr.analysis.common import mean_std, prepare_out, pyplot, save_figure, write_csv, write_json
from gensr.data.dataset import SRData, load_data
from gensr.data.schema import TASK_TITLES
from gensr.errors import ConfigError
from gensr.models.registry import model_class
from gensr.reuse import EvalSettings, ensure_run, evaluate_run, evaluation_table
from gensr.runs import RunInfo

METRICS: tuple[str, ...] = ("R@5", "N@5", "R@10", "N@10")
PLOT_METRICS: tuple[str, ...] = ("R@5", "N@5")
PARAMS: dict[str, str] = {"tau": "tau", "lambda": "lam"}  # --param -> model config field
PARAM_SYMBOL = {"tau": "τ (contrastive temperature)", "lambda": "λ (contrastive loss weight)"}
# Fig. 4: the full model and one switch off at a time (GenSRConfig's ablation switches)
ABLATIONS: dict[str, dict[str, bool]] = {
    "full": {},
    "only-cf": {"use_semantic_view": False},
    "only-semantic": {"use_cf_view": False},
    "no-filter": {"use_soft_filter": False},
    "no-contrastive": {"use_contrastive": False},
}


def train_and_evaluate(
    run_dir: Path,
    model_name: str,
    data: SRData,
    *,
    config_path: str | Path | None,
    sets: Sequence[str],
    cf_path: str | Path | None,
    split: str,
    max_instances: int | None,
    device: str | None,
    progress: bool,
    log: Callable[[str], None],
) -> tuple[dict[str, dict[str, float]], RunInfo]:
    """Train (or reuse) one run and evaluate its best model (:mod:`gensr.reuse`: a finished
    run with the same settings and its cached evaluation are reused); returns (metrics,
    the run's record)."""
    from gensr.train.run import build_configs

    model_config, train_config = build_configs(model_name, config_path=config_path,
                                               sets=list(sets), cf_path=cf_path)
    action, info = ensure_run(run_dir, model_name, dataclasses.asdict(model_config),
                              dataclasses.asdict(train_config), data, device=device, log=log,
                              progress=progress, config_file=run_dir.parent /
                              f"{run_dir.name}.yaml")
    if action == "reused":
        log(f"reusing {run_dir} (finished, same settings)")
    settings = EvalSettings(split=split, max_instances=max_instances)
    evaluation = evaluate_run(run_dir, info, data, evaluation_table(data, settings), settings,
                              device=device, progress=progress)
    return evaluation.metrics, info


def _check_fields(model_name: str, fields: Sequence[str], what: str) -> None:
    known = model_class(model_name).config_class.__dataclass_fields__
    missing = [f for f in fields if f not in known]
    if missing:
        raise ConfigError(f"{what}: model {model_name} has no setting(s) {missing}")


def _fmt_value(value: float) -> str:
    return f"{value:g}"


def run_sweep(
    data_dir: str | Path,
    out: str | Path,
    *,
    param: str,
    values: Sequence[float],
    model_name: str = "gensr",
    config_path: str | Path | None = None,
    sets: Sequence[str] | None = None,
    cf_path: str | Path | None = None,
    seeds: Sequence[int] = (0,),
    max_steps: int | None = None,
    split: str = "test",
    max_instances: int | None = 2000,
    device: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fig. 5: one run per (value, seed) of ``param`` (``tau`` or ``lambda``, or any field of
    the model's config); writes ``sweep.csv``, ``sweep_runs.csv``, ``sweep.png`` and
    ``sweep.json`` into ``out``."""
    field = PARAMS.get(param, param.removeprefix("model."))
    _check_fields(model_name, [field], f"--param {param}")
    if not values:
        raise ConfigError("--values is empty")
    variants = {f"{param}={_fmt_value(v)}": {field: v} for v in values}
    result = _run_grid(data_dir, out, variants, model_name=model_name, config_path=config_path,
                       sets=sets, cf_path=cf_path, seeds=seeds, max_steps=max_steps,
                       split=split, max_instances=max_instances, device=device,
                       progress=progress, log=log, kind="sweep")
    for row in result["rows"] + result["per_run"]:
        row["param"], row["value"] = param, variants[row["variant"]][field]
    out = Path(out)
    paths = {"csv": write_csv(_ordered(result["rows"], ("param", "value")), out / "sweep.csv"),
             "runs_csv": write_csv(_ordered(result["per_run"], ("param", "value")),
                                   out / "sweep_runs.csv")}
    paths["png"] = plot_sweep(result["rows"], param, out / "sweep.png")
    paths["json"] = out / "sweep.json"
    summary = {"analysis": "sweep", "param": param, "field": f"model.{field}",
               "values": list(values), **result["meta"],
               "results": result["rows"], "files": {k: str(v) for k, v in paths.items()}}
    write_json(summary, out / "sweep.json")
    return summary


def run_ablate(
    data_dir: str | Path,
    out: str | Path,
    *,
    variants: Sequence[str] | None = None,
    model_name: str = "gensr",
    config_path: str | Path | None = None,
    sets: Sequence[str] | None = None,
    cf_path: str | Path | None = None,
    seeds: Sequence[int] = (0,),
    max_steps: int | None = None,
    split: str = "test",
    max_instances: int | None = 2000,
    device: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fig. 4: the full model and each ablation switch off (``ABLATIONS``); writes
    ``ablate.csv``, ``ablate_runs.csv``, ``ablate.png`` and ``ablate.json`` into ``out``."""
    names = list(variants or ABLATIONS)
    unknown = [v for v in names if v not in ABLATIONS]
    if unknown:
        raise ConfigError(f"unknown ablation(s) {unknown}; choose from {list(ABLATIONS)}")
    chosen = {v: ABLATIONS[v] for v in names}
    _check_fields(model_name, sorted({k for v in chosen.values() for k in v}), "ablate")
    result = _run_grid(data_dir, out, chosen, model_name=model_name, config_path=config_path,
                       sets=sets, cf_path=cf_path, seeds=seeds, max_steps=max_steps,
                       split=split, max_instances=max_instances, device=device,
                       progress=progress, log=log, kind="ablate")
    out = Path(out)
    paths = {"csv": write_csv(result["rows"], out / "ablate.csv"),
             "runs_csv": write_csv(result["per_run"], out / "ablate_runs.csv")}
    paths["png"] = plot_ablate(result["rows"], names, out / "ablate.png")
    paths["json"] = out / "ablate.json"
    summary = {"analysis": "ablate", "variants": {v: chosen[v] for v in names},
               **result["meta"], "results": result["rows"],
               "files": {k: str(v) for k, v in paths.items()}}
    write_json(summary, out / "ablate.json")
    return summary


def _ordered(rows: list[dict[str, Any]], first: Sequence[str]) -> list[dict[str, Any]]:
    return [{**{k: r[k] for k in first}, **{k: v for k, v in r.items() if k not in first}}
            for r in rows]


def _run_grid(data_dir: str | Path, out: str | Path, variants: dict[str, dict[str, Any]], *,
              model_name: str, config_path: str | Path | None, sets: Sequence[str] | None,
              cf_path: str | Path | None, seeds: Sequence[int], max_steps: int | None,
              split: str, max_instances: int | None, device: str | None, progress: bool,
              log: Callable[[str], None], kind: str) -> dict[str, Any]:
    """Train + evaluate every (variant, seed); per-run rows and mean ± std rows per
    (variant, task)."""
    if not seeds:
        raise ConfigError("--seeds is empty")
    if max_steps is not None and max_steps < 1:
        raise ConfigError(f"--max-steps must be >= 1, got {max_steps}")
    out = prepare_out(out)
    data = load_data(data_dir)
    started = time.time()
    per_run: list[dict[str, Any]] = []
    total = len(variants) * len(seeds)
    done = 0
    for variant, overrides in variants.items():
        for seed in seeds:
            done += 1
            run_sets = list(sets or []) + [f"model.{k}={_as_text(v)}"
                                           for k, v in overrides.items()]
            run_sets.append(f"train.seed={seed}")
            if max_steps is not None:
                run_sets.append(f"train.max_steps={max_steps}")
            run_dir = out / "runs" / variant / f"seed{seed}"
            log(f"[{done}/{total}] {kind} {variant} seed {seed} -> {run_dir}")
            metrics, info = train_and_evaluate(
                run_dir, model_name, data, config_path=config_path, sets=run_sets,
                cf_path=cf_path, split=split, max_instances=max_instances, device=device,
                progress=progress, log=log)
            for task, row in metrics.items():
                per_run.append({"variant": variant, "seed": seed, "task": task,
                                **{m: row[m] for m in METRICS}, "n": row["n"],
                                "steps": info.steps, "best_step": info.best_step,
                                "run_dir": str(run_dir)})
            log("    " + "  ".join(f"{t}: R@5 {r['R@5']:.4f} N@5 {r['N@5']:.4f}"
                                   for t, r in metrics.items()))
    rows = []
    for variant in variants:
        for task in ("src", "rec"):
            mine = [r for r in per_run if r["variant"] == variant and r["task"] == task]
            if not mine:
                continue
            row: dict[str, Any] = {"variant": variant, "task": task, "n_seeds": len(mine),
                                   "n": mine[0]["n"]}
            for m in METRICS:
                mean, std, _ = mean_std(r[m] for r in mine)
                row[m], row[f"{m}_std"] = mean, std
            rows.append(row)
    meta = {"model": model_name, "data": {"path": str(data.path),
                                          "fingerprint": data.fingerprint},
            "config": str(config_path) if config_path else None, "sets": list(sets or []),
            "cf": str(cf_path) if cf_path else None, "seeds": list(seeds),
            "max_steps": max_steps, "split": split, "max_instances": max_instances,
            "time_s": round(time.time() - started, 1)}
    return {"rows": rows, "per_run": per_run, "meta": meta}


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def plot_sweep(rows: list[dict[str, Any]], param: str, path: Path) -> Path:
    """R@5 and N@5 against the parameter, one line per task (± std over seeds)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(PLOT_METRICS), figsize=(5.2 * len(PLOT_METRICS), 4))
    values = sorted({r["value"] for r in rows})
    log_x = len(values) > 1 and min(values) > 0 and max(values) / min(values) >= 10
    for ax, metric in zip(np.atleast_1d(axes), PLOT_METRICS):
        for task, color, marker in (("src", "tab:red", "o"), ("rec", "tab:blue", "s")):
            pts = sorted((r for r in rows if r["task"] == task), key=lambda r: r["value"])
            if not pts:
                continue
            several = any(p["n_seeds"] > 1 for p in pts)
            ax.errorbar([p["value"] for p in pts], [p[metric] for p in pts],
                        yerr=[p[f"{metric}_std"] for p in pts] if several else None,
                        color=color, marker=marker, capsize=3,
                        label=f"{TASK_TITLES[task]} (n={pts[0]['n']})")
            for p in pts:
                ax.annotate(f"{p[metric]:.3f}", (p["value"], p[metric]), fontsize=7,
                            textcoords="offset points", xytext=(0, 6), ha="center")
        if log_x:
            ax.set_xscale("log")
        ax.set_xticks(values, [_fmt_value(v) for v in values])
        ax.minorticks_off()
        ax.set_xlabel(PARAM_SYMBOL.get(param, param))
        ax.set_ylabel(f"test {metric}")
        ax.set_title(f"{metric} vs {param}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_ablate(rows: list[dict[str, Any]], variants: Sequence[str], path: Path) -> Path:
    """One panel per task: R@5 and N@5 bars per variant (± std over seeds)."""
    plt = pyplot()
    tasks = [t for t in ("src", "rec") if any(r["task"] == t for r in rows)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(1.3 * len(variants) * len(tasks) + 2, 4),
                             squeeze=False)
    width = 0.8 / len(PLOT_METRICS)
    for ax, task in zip(axes[0], tasks):
        for j, metric in enumerate(PLOT_METRICS):
            vals, errs = [], []
            for v in variants:
                row = next((r for r in rows if r["variant"] == v and r["task"] == task), None)
                vals.append(row[metric] if row else math.nan)
                errs.append(row[f"{metric}_std"] if row else 0.0)
            pos = np.arange(len(variants)) + (j - (len(PLOT_METRICS) - 1) / 2) * width
            several = any(r["n_seeds"] > 1 for r in rows)
            ax.bar(pos, vals, width * 0.95, yerr=errs if several else None, capsize=3,
                   label=metric)
            for x, v, e in zip(pos, vals, errs):
                if math.isfinite(v):
                    top = v + (e if several and math.isfinite(e) else 0.0)
                    ax.text(x, top, f"{v:.3f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(variants)), variants, rotation=20)
        ax.set_ylabel("test metric")
        n = next((r["n"] for r in rows if r["task"] == task), 0)
        ax.set_title(f"{TASK_TITLES[task]} (test instances: {n}, seeds: "
                     f"{max(r['n_seeds'] for r in rows)})")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
