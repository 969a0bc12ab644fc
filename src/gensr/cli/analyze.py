"""``gensr analyze …``: the paper's analyses."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.table import Table

from gensr.cli.common import (
    analyze_app,
    console,
)
from gensr.screen import show

_RUNS_HELP = "Run directories (from `gensr train`), each RUN_DIR or LABEL=RUN_DIR; runs with " \
             "the same label form a group (e.g. training seeds)."


def _analysis_features(runs, data, cf: Path | None, text_dim: int, his_len: int, seed: int):
    from gensr.analysis import InputFeatures, shared_cf_path

    cf_path = shared_cf_path(runs, cf)
    console.print(f"model-independent features: CF table {cf_path}, text SVD {text_dim}, "
                  f"history {his_len}")
    return InputFeatures.from_cf_path(data, cf_path, text_dim=text_dim, his_len=his_len,
                                      seed=seed)


def _print_files(files: dict) -> None:
    for path in files.values():
        console.print(f"wrote [bold]{path}[/bold]")


@analyze_app.command("mi")
def analyze_mi(
    runs: list[str] = typer.Argument(..., help=_RUNS_HELP),
    out: Path = typer.Option(Path("runs/analysis/mi"), "--out", "-o", help="Output folder."),
    data: Path | None = typer.Option(None, help="Data directory (default: the runs')."),
    cf: Path | None = typer.Option(None, "--cf", help="CF table for X (default: the one the "
                                   "runs were trained with)."),
    split: str = typer.Option("test", help="valid | test (held-out instances)."),
    tasks: str = typer.Option("src,rec", help="Tasks to estimate, comma-separated."),
    max_instances: int = typer.Option(500, help="Instances per task (seeded subset)."),
    candidates: int = typer.Option(20, help="Pairs per instance: the target + k-1 other "
                                   "stored candidates."),
    mine_seeds: str = typer.Option("0,1,2", help="MINE seeds (each: a split and an init)."),
    steps: int = typer.Option(1500, help="MINE optimizer steps per estimate."),
    batch_size: int = typer.Option(512, help="MINE mini-batch (pairs)."),
    lr: float = typer.Option(5e-4, help="MINE learning rate (Adam)."),
    hidden: int = typer.Option(128, help="Width of the statistics network."),
    ema_rate: float = typer.Option(0.01, help="Moving-average rate of the gradient "
                                   "correction."),
    text_dim: int = typer.Option(32, help="Text vector width (TF-IDF + SVD)."),
    his_len: int = typer.Option(20, help="History length of the features."),
    device: str | None = typer.Option(None, help="cpu | cuda (scoring)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Table 1: MINE estimates of I(X; Y_S) and I(X; Y_R) for each run (mean ± std)."""
    from gensr.analysis import MIConfig, MineConfig, load_runs, run_mi
    from gensr.analysis.common import parse_ints

    config = MIConfig(split=split, tasks=tuple(t.strip() for t in tasks.split(",") if t),
                      max_instances=max_instances, candidates=candidates,
                      mine_seeds=tuple(parse_ints(mine_seeds, "--mine-seeds")),
                      mine=MineConfig(steps=steps, batch_size=batch_size, lr=lr,
                                      hidden=hidden, ema_rate=ema_rate),
                      progress=progress)
    loaded, dataset = load_runs(runs, data, device)
    features = _analysis_features(loaded, dataset, cf, text_dim, his_len, 0)
    summary = run_mi(loaded, dataset, features, out, config, log=console.print)
    table = Table(title=f"I(X; Y) in nats, {dataset.name} {split} (mean ± std)")
    table.add_column("model")
    for task in config.tasks:
        table.add_column({"src": "Search", "rec": "Rec."}[task], justify="right")
    for label, per in summary["summary"].items():
        cells = []
        for task in config.tasks:
            row = per[task]
            cells.append("–" if not math.isfinite(row["mean"]) else
                         f"{row['mean']:.4f} ± {row['std']:.4f} (n={row['n_estimates']})")
        table.add_row(label, *cells)
    show(table, console)
    _print_files(summary["files"])


@analyze_app.command("grad-conflict")
def analyze_grad_conflict(
    data: Path = typer.Option(..., help="Data directory."),
    model: list[str] = typer.Option(..., "--model", help="NAME or NAME:CONFIG.yaml "
                                    "(repeatable), e.g. --model gensr:configs/"
                                    "analysis_gensr_cpu.yaml --model unisar."),
    set_: list[str] | None = typer.Option(
        None, "--set", help="KEY=V for every model that has KEY, or LABEL:KEY=V for one."),
    cf: Path | None = typer.Option(None, "--cf", help="CF table (models that take one)."),
    steps: int = typer.Option(200, help="Training steps per model."),
    batch_size: int | None = typer.Option(None, help="Instances per batch, the same for "
                                          "every model (default: the first model's)."),
    negatives: int | None = typer.Option(None, help="Negatives per positive (default: the "
                                         "first model's)."),
    seed: int | None = typer.Option(None, help="Data order, negatives and init (default: "
                                    "the first model's)."),
    smooth: int = typer.Option(20, help="Trailing-mean window of the line plot."),
    out: Path = typer.Option(Path("runs/analysis/grad-conflict"), "--out", "-o",
                             help="Output folder."),
    device: str | None = typer.Option(None, help="cpu | cuda."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Gradient conflict: per-step cosine of the search and rec gradients on a shared block."""
    from gensr.analysis import models_from_specs, run_grad_conflict
    from gensr.data import load_data

    specs = models_from_specs(model, set_, cf)
    summary = run_grad_conflict(load_data(data), specs, out, steps=steps,
                                batch_size=batch_size, n_negatives=negatives, seed=seed,
                                smooth=smooth, device=device, progress=progress,
                                log=console.print)
    table = Table(title=f"cos(∇L_S, ∇L_R) on the shared block, {steps} steps")
    for col in ("model", "mean", "median", "share < 0", "mean (last half)"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for label, row in summary["models"].items():
        table.add_row(label, f"{row['mean_cos']:.4f}", f"{row['median_cos']:.4f}",
                      f"{100 * row['frac_negative']:.1f}%", f"{row['mean_cos_last_half']:.4f}")
    show(table, console)
    _print_files(summary["files"])


@analyze_app.command("space")
def analyze_space(
    runs: list[str] = typer.Argument(..., help=_RUNS_HELP),
    out: Path = typer.Option(Path("runs/analysis/space"), "--out", "-o",
                             help="Output folder."),
    data: Path | None = typer.Option(None, help="Data directory (default: the runs')."),
    cf: Path | None = typer.Option(None, "--cf", help="CF table for the task inputs "
                                   "(default: the runs')."),
    split: str = typer.Option("test", help="valid | test"),
    max_instances: int = typer.Option(400, help="Instances per task (balanced)."),
    perplexity: float = typer.Option(30.0, help="t-SNE perplexity."),
    text_dim: int = typer.Option(32, help="Text vector width (TF-IDF + SVD)."),
    his_len: int = typer.Option(20, help="History length of the task inputs."),
    seed: int = typer.Option(0, help="Instance subset, t-SNE, probe folds."),
    device: str | None = typer.Option(None, help="cpu | cuda."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Fig. 3: t-SNE/KDE of task inputs, PCA of task hidden states, task separation."""
    from gensr.analysis import SpaceConfig, load_runs, run_space

    config = SpaceConfig(split=split, max_instances=max_instances, perplexity=perplexity,
                         seed=seed, progress=progress)
    loaded, dataset = load_runs(runs, data, device)
    features = _analysis_features(loaded, dataset, cf, text_dim, his_len, seed)
    summary = run_space(loaded, dataset, features, out, config, log=console.print)
    table = Table(title="task separation (probe: chance 0.5; overlap: 1 = same)")
    for col in ("panel", "probe acc", "silhouette", "KDE overlap"):
        table.add_column(col, justify="left" if col == "panel" else "right")
    for row in summary["separation"]:
        table.add_row(row["panel"], f"{row['probe_acc']:.3f}", _num(row["silhouette"]),
                      _num(row["kde_overlap"]))
    show(table, console)
    _print_files(summary["files"])


def _num(value) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _print_grid(summary: dict, key: str, title: str) -> None:
    table = Table(title=title)
    for col in (key, "task", "R@5", "N@5", "R@10", "N@10", "seeds"):
        table.add_column(col, justify="left" if col in (key, "task") else "right")
    for row in summary["results"]:
        several = row["n_seeds"] > 1
        table.add_row(str(row[key]), row["task"],
                      *[f"{row[m]:.4f}" + (f" ± {row[m + '_std']:.4f}" if several else "")
                        for m in ("R@5", "N@5", "R@10", "N@10")],
                      str(row["n_seeds"]))
    show(table, console, keep=2)
    _print_files(summary["files"])


def _grid_options(seeds: str):
    from gensr.analysis.common import parse_ints

    return tuple(parse_ints(seeds, "--seeds"))


@analyze_app.command("sweep")
def analyze_sweep(
    param: str = typer.Option(..., help="tau | lambda (or any field of the model's config)."),
    values: str = typer.Option(..., help="Comma-separated values, e.g. 0.05,0.1,0.2."),
    data: Path = typer.Option(..., help="Data directory."),
    model: str = typer.Option("gensr", help="Model name."),
    config: Path | None = typer.Option(None, "--config", help="YAML with 'model:' and "
                                       "'train:' sections."),
    set_: list[str] | None = typer.Option(None, "--set", help="key=value (repeatable)."),
    cf: Path | None = typer.Option(None, "--cf", help="CF item table (model.cf_path)."),
    seeds: str = typer.Option("0", help="Training seeds per value (mean ± std)."),
    max_steps: int | None = typer.Option(None, help="Bound on training steps per run."),
    split: str = typer.Option("test", help="valid | test"),
    max_instances: int | None = typer.Option(2000, help="Seeded subset of evaluation "
                                             "instances."),
    out: Path = typer.Option(Path("runs/analysis/sweep"), "--out", "-o",
                             help="Output folder (runs go in OUT/runs/)."),
    device: str | None = typer.Option(None, help="cpu | cuda."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Fig. 5: train the model per value of τ or λ; test R@5/N@5 per task against it."""
    from gensr.analysis import run_sweep
    from gensr.analysis.common import parse_values

    summary = run_sweep(data, out, param=param, values=parse_values(values), model_name=model,
                        config_path=config, sets=set_, cf_path=cf, seeds=_grid_options(seeds),
                        max_steps=max_steps, split=split, max_instances=max_instances,
                        device=device, progress=progress, log=console.print)
    _print_grid(summary, "value", f"{model}: test metrics against {param}")


@analyze_app.command("ablate")
def analyze_ablate(
    data: Path = typer.Option(..., help="Data directory."),
    variants: str = typer.Option("full,only-cf,only-semantic,no-filter,no-contrastive",
                                 help="Comma-separated variants."),
    model: str = typer.Option("gensr", help="Model name (its config must have the "
                              "use_* switches)."),
    config: Path | None = typer.Option(None, "--config", help="YAML with 'model:' and "
                                       "'train:' sections."),
    set_: list[str] | None = typer.Option(None, "--set", help="key=value (repeatable)."),
    cf: Path | None = typer.Option(None, "--cf", help="CF item table (model.cf_path)."),
    seeds: str = typer.Option("0", help="Training seeds per variant (mean ± std)."),
    max_steps: int | None = typer.Option(None, help="Bound on training steps per run."),
    split: str = typer.Option("test", help="valid | test"),
    max_instances: int | None = typer.Option(2000, help="Seeded subset of evaluation "
                                             "instances."),
    out: Path = typer.Option(Path("runs/analysis/ablate"), "--out", "-o",
                             help="Output folder (runs go in OUT/runs/)."),
    device: str | None = typer.Option(None, help="cpu | cuda."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Fig. 4: the full model against each ablation switch; test R@5/N@5 per task.

    Variants: full, only-cf (no semantic view), only-semantic (no CF view), no-filter (mean
    instead of soft filtering), no-contrastive (λ·L_cl dropped)."""
    from gensr.analysis import run_ablate

    names = [v.strip() for v in variants.split(",") if v.strip()]
    summary = run_ablate(data, out, variants=names, model_name=model, config_path=config,
                         sets=set_, cf_path=cf, seeds=_grid_options(seeds),
                         max_steps=max_steps, split=split, max_instances=max_instances,
                         device=device, progress=progress, log=console.print)
    _print_grid(summary, "variant", f"{model}: ablations")
