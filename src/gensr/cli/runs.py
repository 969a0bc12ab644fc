"""``gensr train``, ``evaluate``, ``compare`` and ``quickstart``: runs and their metrics."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from gensr.cli.common import (
    _fast_path_option,
    _fuse_option,
    _precision_option,
    app,
    console,
)


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

    if run.trained and run.best_metric and PartialState().is_main_process:
        best = run.best_metric
        from gensr.runs import STOP_REASONS

        why = STOP_REASONS.get(run.stop_reason or "", run.status)
        console.print(f"{run.model}: best {best['name']} {best['value']:.4f} at step "
                      f"{run.best_step} of {run.steps} ({why}, "
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
    full: bool = typer.Option(False, help="Rank the whole catalogue: models that score every "
                              "item directly, any model through --retriever."),
    retriever: list[str] | None = typer.Option(
        None, "--retriever", help="With --full: retrieve --rerank-n items with SPEC, then the "
        "model reranks them (repeatable): lightgcn | lightgcn-history | bm25 | pop | "
        "NAME=RUN_DIR (sasrec, tem) | A+B (union) (docs/serving.md)."),
    rerank_n: int = typer.Option(100, "--rerank-n", min=1, help="Items retrieved per "
                                 "instance for the reranker."),
    index: str = typer.Option("exact", help="Dense retrievers: exact | hnsw (approximate, "
                              "FAISS; built once, saved in the run's retrieval/)."),
    ties: str = typer.Option("expected", help="expected | pessimistic | optimistic"),
    batch_size: int = typer.Option(64, help="Instances per batch."),
    max_instances: int | None = typer.Option(None, help="Seeded subset of instances."),
    save_scores: Path | None = typer.Option(None, help="Write every instance's scores "
                                               "(Parquet); with --retriever its retrieved "
                                               "items and reranked order."),
    device: str | None = typer.Option(None, help="cpu | cuda (default: cuda if present)."),
    precision: str = _precision_option(),
    fast_path: bool = _fast_path_option(),
    candidates: str = typer.Option("uniform", "--candidates", help="Candidate strategy: "
                                   "uniform | bm25-hard | popular | dense-hard (`gensr data "
                                   "candidates`)."),
    fuse: str | None = _fuse_option(evaluate=True),
) -> None:
    """Evaluate a trained run or a reference scorer on the stored candidates (or, with
    --full, on the whole catalogue)."""
    from gensr.eval.runner import evaluate_run

    evaluate_run(run_dir=run_dir, model=model, data=data, split=split, full=full, ties=ties,
                 batch_size=batch_size, max_instances=max_instances, save_scores=save_scores,
                 device=device, console=console, precision=precision, fast_path=fast_path,
                 candidates=candidates, retrievers=retriever or None, rerank_n=rerank_n,
                 index=index, fuse=fuse)


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
                                       "models.NAME.{model,train}, eval, cf, seeds, "
                                       "history_window, validation, significance."),
    cf: Path | None = typer.Option(None, "--cf", help="CF item table for the models that take "
                                   "one (default: pretrain OUT/cf.safetensors)."),
    seeds: int | None = typer.Option(None, "--seeds", help="Runs per seeded model (seeds "
                                     "train.seed … + N − 1; default: the config's seeds: "
                                     "list, else 1); >1 reports mean ± std."),
    max_instances: int | None = typer.Option(None, "--max-instances", help="Seeded subset of "
                                             "the evaluation instances (overrides "
                                             "eval.max_instances)."),
    candidates: str | None = typer.Option(None, "--candidates", help="Candidate strategy: "
                                          "uniform | bm25-hard | popular (overrides "
                                          "eval.candidates; `gensr data candidates`)."),
    history_window: int | None = typer.Option(None, "--history-window", help="max_his_len "
                                              "(interactions) of every model that reads a "
                                              "history and sets none (overrides the config's "
                                              "history_window)."),
    device: str | None = typer.Option(None, help="cpu | cuda (default: cuda if present)."),
    progress: bool = typer.Option(True, help="Show evaluation progress bars."),
    precision: str = _precision_option(),
    fast_path: bool = _fast_path_option(),
) -> None:
    """Train (or reuse) and evaluate models on the same candidates; write the comparison."""
    from gensr.compare import compare

    compare(data, models, out, config_path=config, cf_path=cf, seeds=seeds,
            max_instances=max_instances, candidates=candidates, history_window=history_window,
            device=device, progress=progress, precision=precision, fast_path=fast_path,
            log=lambda s: console.print(s, highlight=False, soft_wrap=True), console=console)


@app.command("quickstart")
def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), help="Where to write data and results."),
    device: str | None = typer.Option(None, help="cpu | cuda (default: cuda if present)."),
    fresh: bool = typer.Option(False, help="Start over instead of reusing finished steps."),
    max_steps: int | None = typer.Option(None, help="Cap GenSR's training steps (default: "
                                         "the packaged quickstart config's)."),
) -> None:
    """The main job on the embedded synthetic data, with one results table.

    Prepare → pretrain the CF view → train GenSR (small, not pretrained T5) → evaluate → one
    table beside random, pop and BM25, written to OUT/results.{json,md}. Finished steps are
    reused on a second run."""
    from gensr.quickstart import run_quickstart

    run_quickstart(out, device=device, console=console, fresh=fresh, max_steps=max_steps)
