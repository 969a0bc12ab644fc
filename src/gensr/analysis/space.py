"""``gensr analyze space``: Fig. 3 — where the rec and search tasks live.

(a) **Task inputs** (model-independent): for each held-out instance, the history's CF and
text vectors soft-filtered by its target with parameter-free attention
(:meth:`InputFeatures.task_inputs`, the analogue of the paper's concatenated filtered CF and
semantic history vectors), embedded in 2-D by t-SNE, with a Gaussian KDE contour per task.

(b, c, …) **Task-specific hidden states** of each run: ``model.representation(batch)`` at the
instance's target (the hidden state its task decision reads), projected on its first two
principal components, rec vs search coloured.

Beside the plots, the separation of the two tasks in each panel, measured three ways:

* ``probe_acc``: a logistic-regression probe for the task on the full vectors (standardised),
  mean k-fold cross-validated accuracy (balanced classes: chance = 0.5);
* ``silhouette``: silhouette score of the task labels in the 2-D plane (−1 … 1);
* ``kde_overlap``: Bhattacharyya coefficient of the two tasks' 2-D KDEs on a grid (1 = the
  same distribution, 0 = disjoint).

The same instances (a balanced, seeded subset of both tasks) feed every panel.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gensr.analysis.common import (
    AnalysisRun,
    prepare_out,
    pyplot,
    representation_table,
    require,
    save_figure,
    standardise,
    targets_only,
    task_instances,
    write_csv,
    write_json,
)
from gensr.analysis.features import InputFeatures
from gensr.data.batching import InstanceTable
from gensr.data.dataset import SRData
from gensr.errors import ConfigError


@dataclass
class SpaceConfig:
    """Settings of the parameter-space analysis."""

    split: str = "test"
    max_instances: int = 400  # per task (the smaller task bounds both: balanced classes)
    perplexity: float = 30.0  # t-SNE
    probe_folds: int = 5
    batch_size: int = 32
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.max_instances < 10:
            raise ConfigError(f"--max-instances must be >= 10, got {self.max_instances}")
        if self.probe_folds < 2:
            raise ConfigError(f"--probe-folds must be >= 2, got {self.probe_folds}")


def concat_tables(tables: Sequence[InstanceTable]) -> InstanceTable:
    """Row-wise concatenation of evaluation tables with the same number of candidates."""
    def cat(name: str) -> np.ndarray | None:
        parts = [getattr(t, name) for t in tables]
        return None if any(p is None for p in parts) else np.concatenate(parts)

    return InstanceTable(user=cat("user"), task=cat("task"), query=cat("query"),
                         seq=cat("seq"), candidates=cat("candidates"),
                         labels=cat("labels"), target_pos=cat("target_pos"))


def balanced_instances(data: SRData, split: str, n: int, seed: int) -> InstanceTable:
    """The same number of rec and search instances (seeded subsets), rec first."""
    rec = task_instances(data, split, "rec", n, seed)
    src = task_instances(data, split, "src", n, seed)
    m = min(len(rec), len(src))
    if m < 5:
        raise ConfigError(f"{data.path}: {len(rec)} rec and {len(src)} src {split} instances; "
                          "the space analysis needs at least 5 of each")
    return concat_tables([rec.subset(np.arange(m)), src.subset(np.arange(m))])


def separation(full: np.ndarray, plane: np.ndarray, task: np.ndarray, folds: int,
               seed: int) -> dict[str, float]:
    """probe_acc (± std over folds), silhouette and kde_overlap (see the module docstring)."""
    lm = require("sklearn.linear_model")
    ms = require("sklearn.model_selection")
    metrics = require("sklearn.metrics")
    x = standardise(full)
    folds = int(min(folds, np.bincount(task).min()))
    probe = lm.LogisticRegression(max_iter=2000, C=1.0)
    cv = ms.StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    acc = ms.cross_val_score(probe, x, task, cv=cv, scoring="accuracy")
    try:
        sil = float(metrics.silhouette_score(plane, task))
    except ValueError:
        sil = math.nan
    return {"probe_acc": float(acc.mean()), "probe_acc_std": float(acc.std()),
            "silhouette": sil, "kde_overlap": kde_overlap(plane, task)}


def _grid(plane: np.ndarray, n: int = 120) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lo, hi = plane.min(axis=0), plane.max(axis=0)
    pad = 0.15 * np.maximum(hi - lo, 1e-9)
    xs = np.linspace(lo[0] - pad[0], hi[0] + pad[0], n)
    ys = np.linspace(lo[1] - pad[1], hi[1] + pad[1], n)
    gx, gy = np.meshgrid(xs, ys)
    return gx, gy, np.vstack([gx.ravel(), gy.ravel()])


def task_densities(plane: np.ndarray, task: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray | None]] | None:
    """Each task's Gaussian KDE evaluated on a grid over the plane (None for a task whose
    points are degenerate)."""
    stats = require("scipy.stats")
    gx, gy, grid = _grid(plane)
    dens: list[np.ndarray | None] = []
    for t in (0, 1):
        pts = plane[task == t]
        try:
            dens.append(stats.gaussian_kde(pts.T)(grid).reshape(gx.shape))
        except (np.linalg.LinAlgError, ValueError):
            dens.append(None)
    return gx, gy, dens


def kde_overlap(plane: np.ndarray, task: np.ndarray) -> float:
    """Bhattacharyya coefficient Σ √(p q) of the two tasks' 2-D KDEs (normalised on a grid)."""
    _, _, dens = task_densities(plane, task)  # type: ignore[misc]
    if any(d is None or d.sum() <= 0 for d in dens):
        return math.nan
    p, q = (d / d.sum() for d in dens)  # type: ignore[union-attr]
    return float(np.sqrt(p * q).sum())


def run_space(
    runs: Sequence[AnalysisRun],
    data: SRData,
    features: InputFeatures,
    out: str | Path,
    config: SpaceConfig | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fig. 3 for ``runs``; writes ``space.png``, ``space_points.csv``,
    ``space_separation.csv`` and ``space.json`` into ``out``."""
    config = config or SpaceConfig()
    manifold = require("sklearn.manifold")
    decomposition = require("sklearn.decomposition")
    for run in runs:
        missing = [t for t in ("rec", "src") if t not in run.model.tasks]
        if missing:
            raise ConfigError(f"{run.label} ({run.name}) does not serve {missing}: the space "
                              "analysis compares the two tasks inside one model")
    out = prepare_out(out)
    started = time.time()
    table = balanced_instances(data, config.split, config.max_instances, config.seed)
    task = table.task.astype(int)
    log(f"{int((task == 0).sum())} rec + {int((task == 1).sum())} src {config.split} "
        "instances")
    panels: list[dict[str, Any]] = []

    # (a) model-independent task inputs -> t-SNE
    inputs = features.task_inputs(table)
    perplexity = float(min(config.perplexity, (len(inputs) - 1) / 3))
    tsne = manifold.TSNE(n_components=2, perplexity=perplexity, init="pca",
                         random_state=config.seed)
    plane = tsne.fit_transform(standardise(inputs))
    panels.append({"panel": "task inputs", "label": "inputs", "run_dir": "",
                   "method": "t-SNE", "plane": plane, "explained": math.nan,
                   **separation(inputs, plane, task, config.probe_folds, config.seed)})
    log(_line(panels[-1]))

    # (b, c, ...) each run's task-specific hidden states -> PCA
    targets = targets_only(table)
    for run in runs:
        rep = representation_table(run.model, data, targets, config.batch_size,
                                   progress=config.progress, desc=f"{run.label} states")[:, 0]
        pca = decomposition.PCA(n_components=2, random_state=config.seed)
        plane = pca.fit_transform(rep)
        panels.append({"panel": f"{run.label} hidden states", "label": run.label,
                       "run_dir": str(run.run_dir or ""), "method": "PCA", "plane": plane,
                       "explained": float(pca.explained_variance_ratio_.sum()),
                       "dim": int(rep.shape[1]),
                       **separation(rep, plane, task, config.probe_folds, config.seed)})
        log(_line(panels[-1]))

    points = []
    for p in panels:
        for i, (x, y) in enumerate(p["plane"]):
            points.append({"panel": p["panel"], "label": p["label"], "run_dir": p["run_dir"],
                           "method": p["method"], "row": i, "user_id": int(table.user[i]),
                           "task": "rec" if task[i] == 0 else "src", "x": float(x),
                           "y": float(y)})
    keys = ("panel", "label", "run_dir", "method", "probe_acc", "probe_acc_std",
            "silhouette", "kde_overlap", "explained")
    sep_rows = [{k: p.get(k) for k in keys} | {"n_rec": int((task == 0).sum()),
                                                 "n_src": int((task == 1).sum())}
                for p in panels]
    paths = {"points_csv": write_csv(points, out / "space_points.csv"),
             "separation_csv": write_csv(sep_rows, out / "space_separation.csv")}
    paths["png"] = plot_space(panels, task, out / "space.png")
    paths["json"] = out / "space.json"
    summary = {
        "analysis": "space",
        "definition": {
            "task_inputs": "history CF and text vectors soft-filtered by the target with "
                           "parameter-free attention softmax(e_c . e_h / sqrt(d)), "
                           "concatenated (model-independent); t-SNE to 2-D",
            "hidden_states": "model.representation(batch) at each instance's target; PCA "
                             "to 2-D",
            "probe_acc": "k-fold CV accuracy of a logistic-regression task probe on the full "
                         "vectors (chance 0.5)",
            "silhouette": "silhouette of the task labels in the 2-D plane",
            "kde_overlap": "Bhattacharyya coefficient of the two tasks' 2-D KDEs (1 = same)",
        },
        "data": {"path": str(data.path), "fingerprint": data.fingerprint},
        "features": {"cf_table": features.cf_source, "his_len": features.his_len},
        "config": asdict(config) | {"perplexity_used": perplexity},
        "separation": sep_rows,
        "files": {k: str(v) for k, v in paths.items()},
        "time_s": round(time.time() - started, 1),
    }
    write_json(summary, out / "space.json")
    return summary


def _line(p: dict[str, Any]) -> str:
    return (f"{p['panel']} ({p['method']}): probe acc {p['probe_acc']:.3f}, silhouette "
            f"{p['silhouette']:.3f}, KDE overlap {p['kde_overlap']:.3f}")


def plot_space(panels: list[dict[str, Any]], task: np.ndarray, path: Path) -> Path:
    """One panel per plane (KDE contours + points, rec blue / search red), then a bar chart
    of the separation measures per panel."""
    plt = pyplot()
    n = len(panels)
    fig, axes = plt.subplots(1, n + 1, figsize=(4.3 * (n + 1), 4.3))
    names = {0: ("rec", "tab:blue", "Blues"), 1: ("search", "tab:red", "Reds")}
    for k, (ax, p) in enumerate(zip(axes, panels)):
        plane = p["plane"]
        gx, gy, dens = task_densities(plane, task)  # type: ignore[misc]
        for t, (name, color, cmap) in names.items():
            pts = plane[task == t]
            ax.scatter(pts[:, 0], pts[:, 1], s=4, color=color, alpha=0.25, lw=0)
            if dens[t] is not None:
                ax.contour(gx, gy, dens[t], levels=6, cmap=cmap, linewidths=1.2)
            ax.plot([], [], color=color, label=name)
        letter = "abcdefghijklmnopqrstuvwxyz"[k]
        what = "t-SNE + KDE" if p["method"] == "t-SNE" else \
            f"PCA ({100 * p['explained']:.0f}% var.)"
        ax.set_title(f"({letter}) {p['panel']}\n{what}", fontsize=10)
        ax.text(0.02, 0.02, f"probe {p['probe_acc']:.2f} | sil {p['silhouette']:.2f} | "
                f"overlap {p['kde_overlap']:.2f}", transform=ax.transAxes, fontsize=8,
                bbox={"facecolor": "white", "alpha": 0.7, "lw": 0})
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=8, loc="upper right")
    ax = axes[-1]
    metrics = [("probe_acc", "probe accuracy"), ("silhouette", "silhouette"),
               ("kde_overlap", "KDE overlap")]
    width = 0.8 / len(metrics)
    for j, (key, name) in enumerate(metrics):
        vals = [p[key] if p[key] is not None and math.isfinite(p[key]) else 0.0
                for p in panels]
        ax.bar(np.arange(n) + (j - 1) * width, vals, width, label=name)
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(n), ["inputs" if p["method"] == "t-SNE" else p["label"]
                             for p in panels], rotation=20, fontsize=8)
    sils = [p["silhouette"] for p in panels if p["silhouette"] is not None
            and math.isfinite(p["silhouette"])]
    ax.set_ylim(min([-0.1] + [v - 0.05 for v in sils]), 1.2)
    ax.set_title("Task separation (probe: chance 0.5;\noverlap: 1 = same distribution)",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper center", ncol=3, columnspacing=0.8)
    fig.tight_layout()
    return save_figure(fig, path)
