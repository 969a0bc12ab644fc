"""``gensr <command>``: a thin command line over the modules (see ``gensr --help``)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from gensr.errors import GensrError

console = Console()
app = typer.Typer(
    help="gensr: unified search & recommendation with one generative model (GenSR).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Prepare and inspect canonical S&R data directories.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")


def _parse_options(pairs: list[str] | None) -> dict[str, object]:
    from gensr.config import parse_set

    return parse_set(pairs)


# --- data ------------------------------------------------------------------------------
@data_app.command("prepare")
def data_prepare(
    source: str = typer.Argument(..., help="synthetic | amazon | amazon-atomic | kuaisar | csv"),
    out: Path = typer.Option(..., "--out", "-o", help="Data directory to write."),
    raw: Path | None = typer.Option(None, "--raw", help="Raw file or folder to read."),
    seed: int = typer.Option(0, help="Seed for query choice and candidate sampling."),
    split: str | None = typer.Option(
        None, help="Split strategy: loo | day | given (default: the source's own)."),
    negatives: int = typer.Option(99, help="Sampled negatives per evaluation instance."),
    option: list[str] | None = typer.Option(
        None, "--option", help="Adapter option key=value (repeatable), e.g. min_user=5."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out."),
) -> None:
    """Convert raw logs into a canonical data directory and print the adapter's report."""
    from gensr.data.prepare import prepare

    start = time.time()
    path, report = prepare(source, raw, out, seed=seed, split=split,  # type: ignore[arg-type]
                           n_negatives=negatives, overwrite=overwrite,
                           options=_parse_options(option))
    _print_report(report)
    console.print(f"wrote [bold]{path}[/bold] in {time.time() - start:.1f}s")


def _print_report(report) -> None:
    table = Table(title=f"{report.source}: rows read / dropped")
    table.add_column("what")
    table.add_column("rows", justify="right")
    for f, n in report.files.items():
        table.add_row(f"read {f}", f"{n:,}")
    for reason, n in report.dropped.items():
        table.add_row(f"dropped: {reason}", f"{n:,}")
    console.print(table)
    _print_counts(report.counts)
    for note in report.notes:
        console.print(f"note: {note}")


def _print_counts(counts: dict) -> None:
    console.print(
        f"users {counts['users']:,}  items {counts['items']:,}  queries {counts['queries']:,}  "
        f"interactions rec {counts['interactions']['rec']:,} src {counts['interactions']['src']:,}"
    )
    table = Table(title="interactions per split")
    table.add_column("split")
    table.add_column("rec", justify="right")
    table.add_column("src", justify="right")
    for split, row in counts["by_split"].items():
        table.add_row(split, f"{row['rec']:,}", f"{row['src']:,}")
    console.print(table)


@data_app.command("stats")
def data_stats(data_dir: Path = typer.Argument(..., help="A canonical data directory.")) -> None:
    """Print users/items/queries and interactions per behaviour and split."""
    from gensr.data import load_data
    from gensr.data.canonical import dataset_counts

    data = load_data(data_dir)
    console.print(f"[bold]{data.name}[/bold] ({data.path}) fingerprint {data.fingerprint}")
    counts = dataset_counts(data.interactions, data.n_items, data.n_queries)
    _print_counts(counts)
    for split in ("valid", "test"):
        cands = data.candidates(split)
        per = dict(cands.group_by("task").len().iter_rows())
        console.print(f"{split} instances: rec {per.get('rec', 0):,}  src {per.get('src', 0):,}"
                      f"  ({len(cands['candidates'][0]) if cands.height else 0} candidates each)")


# --- training --------------------------------------------------------------------------
@app.command("train")
def train_cmd(
    model: str | None = typer.Option(None, help="Model name (see gensr.models.registry), "
                                        "e.g. sasrec."),
    data: Path | None = typer.Option(None, help="Data directory (from `gensr data prepare`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory to write (new, or the "
                                                      "one to --resume)."),
    cf: Path | None = typer.Option(None, "--cf", help="CF item table: sets model.cf_path."),
    config: Path | None = typer.Option(None, "--config", help="YAML with 'model:' and "
                                           "'train:' sections."),
    set_: list[str] | None = typer.Option(
        None, "--set", help="key=value (repeatable): model.KEY, train.KEY or a bare KEY "
                            "that only one of the two configs has; wins over --config."),
    resume: bool = typer.Option(False, "--resume", help="Continue OUT from OUT/last/."),
    device: str | None = typer.Option(None, help="cpu | cuda (default: cuda if present)."),
) -> None:
    """Train a model; the best one (on validation) and run.json end in OUT."""
    from gensr.train import train_run

    start = time.time()
    run = train_run(out, model, data, config_path=config, sets=set_, cf_path=cf,
                    resume=resume, device=device, log=console.print)
    from accelerate import PartialState

    if run.get("trained") and PartialState().is_main_process:
        best = run["best_metric"]
        console.print(f"{run['model']}: best {best['name']} {best['value']:.4f} at step "
                      f"{run['best_step']} of {run['steps']} ({run['status']}, "
                      f"{time.time() - start:.0f}s) -> {out}")


# --- evaluation ------------------------------------------------------------------------
@app.command("evaluate")
def evaluate_cmd(
    run_dir: Path | None = typer.Argument(None, help="A run directory (from `gensr train`)."),
    model: str | None = typer.Option(None, help="Or a model that needs no training: "
                                        "random | pop | bm25."),
    data: Path | None = typer.Option(None, help="Data directory (with --model, or to "
                                        "override the run's)."),
    split: str = typer.Option("test", help="valid | test"),
    full: bool = typer.Option(False, help="Full ranking over all items (models that can)."),
    ties: str = typer.Option("expected", help="expected | pessimistic | optimistic"),
    batch_size: int = typer.Option(64, help="Instances per batch."),
    max_instances: int | None = typer.Option(None, help="Seeded subset of instances."),
    save_scores: Path | None = typer.Option(None, help="Write every instance's scores "
                                               "(Parquet)."),
    device: str | None = typer.Option(None, help="cpu | cuda (default: cuda if present)."),
) -> None:
    """Evaluate a trained run or a reference scorer on the stored candidates."""
    from gensr.eval.runner import evaluate_run

    evaluate_run(run_dir=run_dir, model=model, data=data, split=split, full=full, ties=ties,
                 batch_size=batch_size, max_instances=max_instances, save_scores=save_scores,
                 device=device, console=console)


# --- comparison --------------------------------------------------------------------------
@app.command("compare")
def compare_cmd(
    data: Path = typer.Option(..., "--data", help="Data directory (from `gensr data "
                              "prepare`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the runs, compare.md and "
                             "compare.json; finished runs in it are reused."),
    models: str = typer.Option("gensr,unisar,sasrec,tem,disc,pop,bm25", "--models",
                               help="Comma-separated model names (table columns, in order)."),
    config: Path | None = typer.Option(None, "--config", help="YAML: defaults.train, "
                                       "models.NAME.{model,train}, eval, cf."),
    cf: Path | None = typer.Option(None, "--cf", help="CF item table for the models that take "
                                   "one (default: pretrain OUT/cf.safetensors)."),
    seeds: int = typer.Option(1, "--seeds", help="Runs per seeded model; >1 reports mean ± "
                              "std."),
    max_instances: int | None = typer.Option(None, "--max-instances", help="Seeded subset of "
                                             "the evaluation instances (overrides "
                                             "eval.max_instances)."),
    device: str | None = typer.Option(None, help="cpu | cuda (default: cuda if present)."),
    progress: bool = typer.Option(True, help="Show evaluation progress bars."),
) -> None:
    """Train (or reuse) and evaluate models on the same candidates; write the comparison."""
    from gensr.compare import compare

    compare(data, models, out, config_path=config, cf_path=cf, seeds=seeds,
            max_instances=max_instances, device=device, progress=progress,
            log=lambda s: console.print(s, highlight=False, soft_wrap=True), console=console)


# --- CF view: LightGCN pretraining -------------------------------------------------------
@app.command("pretrain-cf")
def pretrain_cf_cmd(
    data_dir: Path = typer.Argument(..., help="A canonical data directory."),
    out: Path = typer.Option(..., "--out", "-o", help="CF table to write (.safetensors); "
                             "the JSON card goes beside it (.json)."),
    dim: int = typer.Option(64, help="Embedding width d_cf."),
    layers: int = typer.Option(2, help="LightGCN propagation layers."),
    epochs: int = typer.Option(60, help="Most epochs (early stopping may end sooner)."),
    lr: float = typer.Option(0.02, help="Adam learning rate."),
    batch_size: int = typer.Option(4096, help="Positive edges per BPR step."),
    weight_decay: float = typer.Option(1e-3, help="L2 on the batch's layer-0 embeddings."),
    patience: int = typer.Option(10, help="Validations without a gain in R@20 before "
                                 "stopping."),
    min_epochs: int = typer.Option(10, help="Never stop before this many epochs."),
    eval_every: int = typer.Option(1, help="Epochs between validations."),
    valid_max: int = typer.Option(20000, help="Seeded subset of valid rec instances used "
                                  "for validation (0 = all)."),
    device: str | None = typer.Option(None, help="cpu | cuda (default: cuda if present)."),
    seed: int = typer.Option(0, help="Seed for initialisation, batches and negatives."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Train LightGCN (BPR) on the training split's rec interactions; write the CF table."""
    from gensr.cf import pretrain_cf

    card = pretrain_cf(
        data_dir, out, device=device, progress=progress, dim=dim, layers=layers,
        epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay,
        patience=patience, min_epochs=min_epochs, eval_every=eval_every,
        valid_max=valid_max, seed=seed,
    )
    valid = card["valid"]
    table = Table(title=f"pretrain-cf {card['data_name']}: valid rec, full ranking "
                        f"({valid['instances']:,} instances, training items masked)")
    table.add_column("scorer")
    for name in ("R@10", "N@10", "R@20", "N@20"):
        table.add_column(name, justify="right")
    for label, key in (("lightgcn (best epoch)", "lightgcn"), ("pop", "pop")):
        row = valid.get(key)
        cells = [f"{row[m]:.4f}" for m in ("R@10", "N@10", "R@20", "N@20")] if row else ["-"] * 4
        table.add_row(label, *cells)
    console.print(table)
    graph, fallback = card["graph"], card["fallback"]
    console.print(
        f"graph: {graph['users']:,} users, {graph['items']:,} items, {graph['edges']:,} edges; "
        f"best epoch {card['best_epoch']} of {card['epochs_run']} run; "
        f"fallback ({fallback['rule']}) for {fallback['items']:,} items, "
        f"{fallback['users']:,} users; "
        f"{card['time_s']:.1f}s on {card['device']}")
    console.print(f"wrote [bold]{card['paths']['table']}[/bold] and {card['paths']['card']}")


@app.command("quickstart")
def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), help="Where to write data and results."),
    device: str | None = typer.Option(None, help="cpu | cuda (default: cuda if present)."),
) -> None:
    """The main job on the embedded synthetic data: prepare, evaluate, print one table."""
    from gensr.quickstart import run_quickstart

    run_quickstart(out, device=device, console=console)


def main() -> None:
    """Console-script entry point: errors at gensr's boundaries print one line, exit 2."""
    try:
        app()
    except GensrError as err:
        console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
