"""``gensr analyze mi``: Table 1 — I(X; Y_S) and I(X; Y_R) per model, estimated with MINE.

Definitions (identical for every model; see docs/analysis.md for why):

* a *pair* is (held-out instance i of the task, candidate c): the ``split``'s stored
  instances of the task (a seeded subset of ``max_instances``), each with its target and
  the first ``candidates − 1`` other stored candidates;
* **X** = :meth:`InputFeatures.pair_features` (model-independent: mean CF and text vectors of
  the history, the candidate's CF and text vectors, the query's text vector), standardised
  per column over the task's pairs;
* **Y** = the model's task output for the pair, ``model.score`` (GenSR: P("Yes"); a
  discriminative model: its task head's score), mapped by the monotone rank-Gauss transform
  (:func:`rank_gauss`) over the task's pairs — I(X; Y) is unchanged by it, and MINE sees the
  same N(0, 1) marginal for every model.

Each (run, task, MINE seed) gives one held-out Donsker–Varadhan estimate in nats
(:func:`gensr.analysis.mine.mine`; the seed also picks the train/select/report split of the
instances, the same for every model). Runs sharing a label are a group (training seeds):
the summary reports mean ± std over all its estimates, and separately the spread between
runs and within runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gensr.analysis.common import (
    TASKS,
    AnalysisRun,
    mean_std,
    prepare_out,
    pyplot,
    rank_gauss,
    restrict_candidates,
    save_figure,
    score_table,
    standardise,
    task_instances,
    write_csv,
    write_json,
)
from gensr.analysis.features import InputFeatures
from gensr.analysis.mine import MineConfig, mine
from gensr.data.dataset import SRData
from gensr.errors import ConfigError

X_DEFINITION = (
    "X(i,c) = [mean CF vector of the history ; CF vector of candidate c ; mean text vector of "
    "the history ; text vector of c ; text vector of the query (0 for rec)], history = the "
    "instance's last his_len interactions (both behaviours), CF = the frozen LightGCN table, "
    "text = TF-IDF + truncated SVD of item and query texts; standardised per column over the "
    "task's pairs. The same for every model."
)
Y_DEFINITION = (
    "Y(i,c) = rank-Gauss transform (over the task's pairs) of model.score(i)[c], the model's "
    "task output for candidate c (GenSR: P('Yes'); a discriminative model: its task head)."
)


@dataclass
class MIConfig:
    """Settings of the mutual-information analysis."""

    split: str = "test"
    tasks: tuple[str, ...] = TASKS
    max_instances: int | None = 500  # per task (seeded subset; None = all)
    candidates: int = 20  # pairs per instance: the target + the first k-1 other candidates
    mine_seeds: tuple[int, ...] = (0, 1, 2)
    mine: MineConfig = field(default_factory=MineConfig)
    score_batch_size: int = 32
    seed: int = 0  # the instance subset
    progress: bool = True

    def __post_init__(self) -> None:
        bad = [t for t in self.tasks if t not in TASKS]
        if bad or not self.tasks:
            raise ConfigError(f"--tasks must name rec and/or src, got {list(self.tasks)}")
        if not self.mine_seeds:
            raise ConfigError("--mine-seeds is empty")
        if self.max_instances is not None and self.max_instances < 4:
            raise ConfigError(f"--max-instances must be >= 4, got {self.max_instances}")


def run_mi(
    runs: Sequence[AnalysisRun],
    data: SRData,
    features: InputFeatures,
    out: str | Path,
    config: MIConfig | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Estimate I(X; Y_task) for every run and task; write ``mi.csv`` (summary),
    ``mi_estimates.csv`` (every estimate), ``mi_curves.csv`` (MINE selection curves),
    ``mi.png`` and ``mi.json`` into ``out``. Returns the JSON summary."""
    config = config or MIConfig()
    out = prepare_out(out)
    started = time.time()
    estimates: list[dict[str, Any]] = []
    curves: list[dict[str, Any]] = []
    pools: dict[str, dict[str, int]] = {}
    for task in config.tasks:
        table = task_instances(data, config.split, task, config.max_instances, config.seed)
        if len(table) < 4:
            raise ConfigError(f"{data.path}: only {len(table)} {config.split} instances of "
                              f"task {task}: too few for MINE")
        table = restrict_candidates(table, min(config.candidates, table.candidates.shape[1]))
        k = table.candidates.shape[1]
        x = standardise(features.pair_features(table))
        groups = np.repeat(np.arange(len(table)), k)
        pools[task] = {"instances": len(table), "pairs": len(x), "candidates": k,
                       "x_dim": int(x.shape[1])}
        log(f"{task}: {len(table)} {config.split} instances x {k} candidates = {len(x)} "
            f"pairs, X of width {x.shape[1]}")
        for run in runs:
            base = {"label": run.label, "model": run.name,
                    "run_dir": str(run.run_dir) if run.run_dir else "", "task": task}
            if task not in run.model.tasks:
                for seed in config.mine_seeds:
                    estimates.append({**base, "mine_seed": seed, "mi": math.nan,
                                      "mi_train": math.nan, "best_step": -1,
                                      "n_report": 0, "note": f"{run.name} does not serve {task}"})
                continue
            scores = score_table(run.model, data, table, config.score_batch_size,
                                 progress=config.progress, desc=f"{run.label} {task} scores")
            y = rank_gauss(scores.reshape(-1))
            for seed in config.mine_seeds:
                res = mine(x, y, seed=seed, config=config.mine, groups=groups,
                           progress=config.progress, desc=f"MINE {run.label} {task} s{seed}")
                estimates.append({**base, "mine_seed": seed, "mi": res.estimate,
                                  "mi_train": res.train_bound, "best_step": res.best_step,
                                  "n_report": res.n_report, "note": ""})
                curves.extend({**base, "mine_seed": seed, "step": s, "train_bound_ema": tr,
                               "select_bound": sel} for s, tr, sel in res.curve)
                log(f"  {run.label} ({run.run_dir or 'in memory'}) {task} seed {seed}: "
                    f"I = {res.estimate:.4f} nats (train {res.train_bound:.4f}, "
                    f"step {res.best_step})")

    summary_rows = summarise(estimates, [r.label for r in runs], config.tasks)
    paths = {
        "summary_csv": write_csv(summary_rows, out / "mi.csv"),
        "estimates_csv": write_csv(estimates, out / "mi_estimates.csv"),
        "curves_csv": write_csv(curves or [{"label": "", "task": "", "step": 0}],
                                out / "mi_curves.csv"),
    }
    paths["png"] = plot_mi(summary_rows, estimates, curves, out / "mi.png")
    paths["json"] = out / "mi.json"
    summary = {
        "analysis": "mi",
        "definition": {"X": X_DEFINITION, "Y": Y_DEFINITION, "unit": "nats",
                       "estimator": "MINE, Donsker-Varadhan bound, moving-average gradient "
                                    "correction, reported on held-out instances"},
        "data": {"path": str(data.path), "fingerprint": data.fingerprint},
        "features": {"cf_table": features.cf_source, "his_len": features.his_len,
                     "dims": features.dims},
        "pairs": pools,
        "config": {**{k: v for k, v in asdict(config).items() if k != "mine"},
                   "mine": asdict(config.mine)},
        "runs": [{"label": r.label, "model": r.name, "run_dir": str(r.run_dir or "")}
                 for r in runs],
        "summary": {row["label"]: {} for row in summary_rows},
        "files": {k: str(v) for k, v in paths.items()},
        "time_s": round(time.time() - started, 1),
    }
    for row in summary_rows:
        summary["summary"][row["label"]][row["task"]] = {
            k: row[k] for k in ("mean", "std", "n_estimates", "n_runs", "std_between_runs",
                                "std_within_runs")}
    write_json(summary, out / "mi.json")
    return summary


def summarise(estimates: list[dict[str, Any]], labels: Sequence[str],
              tasks: Sequence[str]) -> list[dict[str, Any]]:
    """Per (label, task): mean ± std over every estimate; the std of the per-run means
    (training seeds) and the mean per-run std (MINE seeds)."""
    rows = []
    for label in dict.fromkeys(labels):
        for task in tasks:
            mine_rows = [e for e in estimates if e["label"] == label and e["task"] == task]
            mean, std, n = mean_std(e["mi"] for e in mine_rows)
            per_run: dict[str, list[float]] = {}
            for e in mine_rows:
                per_run.setdefault(e["run_dir"], []).append(e["mi"])
            run_stats = [mean_std(v) for v in per_run.values()]
            run_means = [m for m, _, c in run_stats if c]
            between = mean_std(run_means)[1] if len(run_means) > 1 else math.nan
            within = mean_std(s for _, s, c in run_stats if c > 1)[0]
            rows.append({"label": label, "task": task, "mean": mean, "std": std,
                         "n_estimates": n, "n_runs": len(run_means),
                         "std_between_runs": between, "std_within_runs": within})
    return rows


SHORT_TITLES = {"src": "Search", "rec": "Rec."}  # the x tick labels: short forms of TASK_TITLES


def plot_mi(rows: list[dict[str, Any]], estimates: list[dict[str, Any]],
            curves: list[dict[str, Any]], path: Path) -> Path:
    """Top: bars (mean ± std) per task and label, every estimate as a dot. Bottom: MINE's
    held-out selection bound over training steps for every estimate."""
    plt = pyplot()
    labels = list(dict.fromkeys(r["label"] for r in rows))
    tasks = [t for t in ("src", "rec") if any(r["task"] == t for r in rows)]
    colors = plt.get_cmap("tab10")
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(max(6.0, 2.2 * len(labels) * len(tasks)), 8),
                                  gridspec_kw={"height_ratios": [3, 2]})
    width = 0.8 / max(1, len(labels))
    for j, label in enumerate(labels):
        ax.bar([0], [0], 0, color=colors(j), alpha=0.75, label=label)  # legend entry
        for i, task in enumerate(tasks):
            row = next(r for r in rows if r["label"] == label and r["task"] == task)
            pos = i + (j - (len(labels) - 1) / 2) * width
            if not math.isfinite(row["mean"]):
                ax.text(pos, 0.0, f"{label}:\nn/a", ha="center", va="bottom", fontsize=8)
                continue
            ax.bar(pos, row["mean"], width * 0.9, yerr=row["std"], capsize=4,
                   color=colors(j), alpha=0.75)
            dots = [e["mi"] for e in estimates if e["label"] == label and e["task"] == task
                    and math.isfinite(e["mi"])]
            ax.scatter(np.full(len(dots), pos), dots, s=12, color="black", zorder=3)
            ax.text(pos, row["mean"] + (row["std"] or 0), f"{row['mean']:.3f}",
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(tasks)), [f"I(X; Y_{t[0].upper()}) — {SHORT_TITLES[t]}"
                                      for t in tasks])
    ax.set_ylabel("MINE estimate (nats, held-out)")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_title("Mutual information between the input X and each task's output Y "
                 "(mean ± std; dots = seeds/runs)")
    ax.legend(loc="best", fontsize=8)
    styles = {"src": "-", "rec": "--"}
    for j, label in enumerate(labels):
        for e in {(c["run_dir"], c["task"], c["mine_seed"]) for c in curves
                  if c["label"] == label}:
            pts = [c for c in curves if c["label"] == label and
                   (c["run_dir"], c["task"], c["mine_seed"]) == e]
            ax2.plot([p["step"] for p in pts], [p["select_bound"] for p in pts],
                     styles.get(e[1], "-"), color=colors(j), lw=1, alpha=0.8)
    ax2.set_xlabel("MINE step")
    ax2.set_ylabel("bound on the selection part")
    ax2.set_title("MINE training curves (solid: search, dashed: rec)")
    fig.tight_layout()
    return save_figure(fig, path)
