"""``gensr <command>``: a thin command line over the modules (see ``gensr --help``)."""

from __future__ import annotations

import math
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

def _precision_option():
    """``--precision`` of the commands that score with GenSR."""
    return typer.Option("auto", help="GenSR's scoring precision: auto (bf16 on CUDA, fp32 on "
                                     "CPU) | bf16 | fp32 (docs/speed.md).")


def _fast_path_option():
    """``--fast-path/--no-fast-path`` of the commands that score with GenSR."""
    return typer.Option(True, "--fast-path/--no-fast-path", help="GenSR's speed levers (fused T5 "
                        "pass and length buckets on every device, larger chunks on CUDA; "
                        "docs/speed.md); --no-fast-path runs the original path.")

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
    from gensr.data.candidates import stored_strategies

    console.print(f"candidate strategies stored: {', '.join(stored_strategies(data.path))}")


@data_app.command("candidates")
def data_candidates(
    data_dir: Path = typer.Argument(..., help="A canonical data directory."),
    strategy: str = typer.Option(..., "--strategy", help="uniform | bm25-hard | popular "
                                 "(docs/data.md#evaluation-candidates)."),
    seed: int | None = typer.Option(None, help="Seed (default: the one the data was "
                                    "prepared with)."),
    negatives: int | None = typer.Option(None, help="Negatives per instance (default: the "
                                         "prepared ones, 99)."),
    overwrite: bool = typer.Option(False, help="Replace this strategy's existing files."),
) -> None:
    """Write another strategy's evaluation candidates beside the ones the data has."""
    from gensr.data import load_data
    from gensr.data.candidates import write_candidates

    data = load_data(data_dir)
    card = write_candidates(data, strategy, seed=seed, n_negatives=negatives,
                            overwrite=overwrite)
    files = card["files"]
    n = card["instances"]
    console.print(f"{strategy} candidates (seed {card['seed']}, {card['n_negatives']} "
                  f"negatives): wrote {files['valid']} ({n['valid']:,} instances) and "  # type: ignore[index]
                  f"{files['test']} ({n['test']:,}) in {card['time_s']}s", highlight=False)  # type: ignore[index]


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
                                   "uniform | bm25-hard | popular (`gensr data candidates`)."),
) -> None:
    """Evaluate a trained run or a reference scorer on the stored candidates (or, with
    --full, on the whole catalogue)."""
    from gensr.eval.runner import evaluate_run

    evaluate_run(run_dir=run_dir, model=model, data=data, split=split, full=full, ties=ties,
                 batch_size=batch_size, max_instances=max_instances, save_scores=save_scores,
                 device=device, console=console, precision=precision, fast_path=fast_path,
                 candidates=candidates, retrievers=retriever or None, rerank_n=rerank_n,
                 index=index)


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


# --- serving -------------------------------------------------------------------------
@app.command("rank")
def rank_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory (GenSR or any baseline)."),
    history: str | None = typer.Option(
        None, help='Past interactions, oldest first: "ITEM[:rec|src[:QUERY]],..." '
                   '(e.g. "B001,B002:src:usb cable") or @FILE.'),
    candidates: str | None = typer.Option(
        None, help='Item ids to rank: "B003,B004,..." or @FILE.'),
    query: str | None = typer.Option(None, help="Search query (leave out to recommend)."),
    top_k: int | None = typer.Option(None, "--top-k", min=1, help="Show only the best k."),
    user: str | None = typer.Option(None, help="Original user id (models that read user ids "
                                    "need it: UniSAR, TEM with user_embedding, lightgcn)."),
    request: str | None = typer.Option(
        None, help="Or a JSON request file (the body of POST /v1/rank; - for stdin)."),
    data: Path | None = typer.Option(None, help="Data directory (default: the run's)."),
    device: str | None = typer.Option(None, help="cpu | cuda (default: cuda if present)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    precision: str = _precision_option(),
    fast_path: bool = _fast_path_option(),
    full: bool = typer.Option(False, "--full", help="Rank the whole catalogue: retrieve "
                              "--rerank-n items, rerank them with the model (no "
                              "--candidates)."),
    retriever: list[str] | None = typer.Option(
        None, "--retriever", help="With --full: retriever SPEC (repeatable; the first serving "
        "the task is used): lightgcn | lightgcn-history | bm25 | pop | NAME=RUN_DIR | A+B "
        "(default: lightgcn from the run's CF table for rec, bm25 for search)."),
    rerank_n: int = typer.Option(100, "--rerank-n", min=1, help="With --full: items "
                                 "retrieved for the reranker."),
    keep_consumed: bool = typer.Option(False, "--keep-consumed", help="With --full: the "
                                       "history's items may be recommended again."),
    index: str = typer.Option("exact", help="With --full: exact | hnsw (dense retrievers)."),
) -> None:
    """Rank candidates for one user history (original item ids) and print the ranking; with
    --full, the whole catalogue (retrieve, then rerank)."""
    import json

    from gensr.errors import ConfigError
    from gensr.serve.parsing import load_request, parse_candidates, parse_history
    from gensr.serve.ranker import Ranker

    if full:
        _rank_full(run_dir, history=history, candidates=candidates, query=query, top_k=top_k,
                   user=user, request=request, data=data, device=device, as_json=as_json,
                   precision=precision, fast_path=fast_path, retrievers=retriever,
                   rerank_n=rerank_n, keep_consumed=keep_consumed, index=index)
        return
    if retriever or keep_consumed:
        raise ConfigError("--retriever and --keep-consumed rank the whole catalogue: add "
                          "--full")
    if request is not None:
        if history or candidates or query or top_k or user:
            raise ConfigError("give either --request FILE or "
                              "--history/--candidates/--query/--user")
        req = load_request(request)
        hist, cands, query, top_k = req.history, req.candidates, req.query, req.top_k
        user = req.user
    else:
        if not candidates:
            raise ConfigError("--candidates is required (or --request FILE)")
        hist, cands = parse_history(history), parse_candidates(candidates)
    ranker = Ranker.from_run(run_dir, data=data, device=device, precision=precision,
                             fast_path=fast_path)
    ranking = ranker.rank(hist, cands, query=query, top_k=top_k, user=user)
    if as_json:
        print(json.dumps({"model": ranker.model_name, **ranking.to_dict()}, indent=2))
        return
    what = f"search {query!r}" if ranking.task == "src" else "recommendation"
    table = Table(title=f"{ranker.model_name} {what}: {len(ranking)} of "
                        f"{ranking.n_candidates} candidates")
    scores = [f"{s.score:.6g}" for s in ranking]
    widths = [len(str(len(ranking))), max(len(s.item) for s in ranking),
              max(len(s) for s in scores)]
    table.add_column("#", justify="right", no_wrap=True, min_width=widths[0])
    table.add_column("item", no_wrap=True, min_width=widths[1])
    table.add_column("score", justify="right", no_wrap=True, min_width=widths[2])
    room = max(12, console.width - sum(widths) - 13)  # what the borders leave for the text
    table.add_column("text", no_wrap=True)
    texts = ranker.data.item_text
    for i, (scored, score) in enumerate(zip(ranking, scores), start=1):
        text = texts[ranker.item_index[scored.item]]
        text = text if len(text) <= room else text[: room - 1] + "…"
        table.add_row(str(i), scored.item, score, text)
    console.print(table)


def _rank_full(run_dir: Path, *, history, candidates, query, top_k, user, request, data,
               device, as_json, precision, fast_path, retrievers, rerank_n, keep_consumed,
               index) -> None:
    """``gensr rank --full``: one full-catalogue ranking, printed."""
    import json

    from gensr.errors import ConfigError
    from gensr.serve.full import FullRequest
    from gensr.serve.parsing import load_full_request, parse_history
    from gensr.serve.ranker import Ranker

    if candidates:
        raise ConfigError("--full ranks the whole catalogue: leave out --candidates")
    if request is not None:
        if history or query or top_k or user or keep_consumed:
            raise ConfigError("give either --request FILE or --history/--query/--user/--top-k/"
                              "--keep-consumed")
        req = load_full_request(request)
    else:
        req = FullRequest(history=parse_history(history), user=user, query=query,
                          top_k=top_k or 10, rerank_n=rerank_n, keep_consumed=keep_consumed)
    ranker = Ranker.from_run(run_dir, data=data, device=device, precision=precision,
                             fast_path=fast_path, retrievers=retrievers or None,
                             rerank_n=rerank_n, index=index)
    (ranking,) = ranker.rank_full_many([req])
    if as_json:
        print(json.dumps({"model": ranker.model_name, **ranking.to_dict()}, indent=2))
        return
    what = f"search {req.query!r}" if ranking.task == "src" else "recommendation"
    t = ranking.timings_ms
    table = Table(title=f"{ranker.model_name} {what}: top {len(ranking)} of the catalogue "
                        f"({ranking.n_candidates} retrieved by {ranking.retriever})")
    scores = [f"{s.score:.6g}" for s in ranking]
    widths = [len(str(len(ranking))), max((len(s.item) for s in ranking), default=4),
              max((len(s) for s in scores), default=5)]
    table.add_column("#", justify="right", no_wrap=True, min_width=widths[0])
    table.add_column("item", no_wrap=True, min_width=widths[1])
    table.add_column("score", justify="right", no_wrap=True, min_width=widths[2])
    room = max(12, console.width - sum(widths) - 13)
    table.add_column("text", no_wrap=True)
    texts = ranker.data.item_text
    for i, (scored, score) in enumerate(zip(ranking, scores), start=1):
        text = texts[ranker.item_index[scored.item]]
        table.add_row(str(i), scored.item, score,
                      text if len(text) <= room else text[: room - 1] + "…")
    console.print(table)
    console.print(f"retrieve {t['retrieve']:.1f} ms, rerank {t['rerank']:.1f} ms")


@app.command("serve")
def serve_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory (GenSR or any baseline)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (default: loopback)."),
    port: int = typer.Option(8080, help="Port to listen on."),
    api_key: str | None = typer.Option(
        None, help="Deprecated (shows in ps): set GENSR_API_KEY or use --api-key-file. "
                   "Require this key in the X-API-Key header."),
    api_key_file: Path | None = typer.Option(
        None, help="A file holding the API key (one line) that clients send in X-API-Key; "
                   "or set GENSR_API_KEY. Needed beyond loopback."),
    insecure: bool = typer.Option(False, help="Allow a non-loopback --host without a key."),
    data: Path | None = typer.Option(None, help="Data directory (default: the run's)."),
    device: str | None = typer.Option(None, help="cpu | cuda (default: cuda if present)."),
    max_candidates: int = typer.Option(1000, min=1, help="Most candidates per request."),
    max_query_chars: int = typer.Option(512, min=1, help="Longest query text."),
    max_batch: int = typer.Option(32, min=1, help="Most requests scored together."),
    window_ms: float = typer.Option(2.0, min=0, help="How long a batch waits for company."),
    max_queue: int = typer.Option(256, min=1, help="Waiting requests before 503."),
    max_body_bytes: int = typer.Option(1 << 20, min=1024, help="Largest body (else 413)."),
    max_concurrency: int | None = typer.Option(
        None, min=1, help="Requests in progress at once, else 503 + Retry-After (default: "
                          "max-queue + max-batch + 64)."),
    max_connections: int = typer.Option(
        1000, min=1, help="Open connections; beyond, the one idle longest is closed."),
    idle_timeout: float = typer.Option(5.0, min=0.001,
                                       help="Seconds before an idle connection is closed."),
    read_timeout: float = typer.Option(
        10.0, min=0.001, help="Seconds a request (head and body) may take to arrive, else "
                              "408."),
    threads: int | None = typer.Option(
        None, min=1, help="torch CPU threads (default: torch's; 1 is often best on a busy "
                          "machine)."),
    log_level: str = typer.Option("info", help="uvicorn log level (debug logs requests)."),
    precision: str = _precision_option(),
    fast_path: bool = _fast_path_option(),
    retriever: list[str] | None = typer.Option(
        None, "--retriever", help="Retriever SPEC of POST /v1/recommend and /v1/search "
        "(repeatable; the first serving a task is its default): lightgcn | lightgcn-history "
        "| bm25 | pop | NAME=RUN_DIR | A+B | rec:SPEC (default: lightgcn from the run's CF "
        "table, bm25)."),
    rerank_n: int = typer.Option(100, "--rerank-n", min=1, help="Items retrieved per "
                                 "full-catalogue request unless it says."),
    index: str = typer.Option("exact", help="Dense retrievers: exact | hnsw (FAISS)."),
    retrieve_threads: str = typer.Option(
        "auto", "--retrieve-threads", help="torch CPU threads of the retrieval stage: auto (1 "
        "for catalogues up to 100,000 items, else the process's), all (the process's) or a "
        "number."),
) -> None:
    """Serve a run over HTTP: POST /v1/rank, /v1/recommend, /v1/search, GET /v1/model,
    /healthz, /metrics (see docs/serving.md)."""
    from gensr.errors import ConfigError
    from gensr.serve.ranker import Limits
    from gensr.serve.server import resolve_api_key, serve

    text = retrieve_threads.strip().lower()
    threads_of_retrieval: int | str | None
    if text in ("auto", "all"):
        threads_of_retrieval = "auto" if text == "auto" else None
    elif text.isdigit() and int(text) >= 1:
        threads_of_retrieval = int(text)
    else:
        raise ConfigError(f"--retrieve-threads must be auto, all or a number >= 1, got "
                          f"{retrieve_threads!r}")

    serve(run_dir, host=host, port=port, api_key=resolve_api_key(api_key, api_key_file),
          insecure=insecure, data=data, device=device,
          limits=Limits(max_candidates=max_candidates, max_query_chars=max_query_chars),
          max_batch=max_batch, window_ms=window_ms, max_queue=max_queue,
          max_body_bytes=max_body_bytes, max_concurrency=max_concurrency,
          max_connections=max_connections, idle_timeout=idle_timeout,
          read_timeout=read_timeout, threads=threads, log_level=log_level,
          precision=precision, fast_path=fast_path, retrievers=retriever or None,
          rerank_n=rerank_n, index=index, retrieve_threads=threads_of_retrieval)

# --- analyses (gensr analyze …) ----------------------------------------------------------
analyze_app = typer.Typer(
    help="The paper's analyses: mutual information (Table 1), gradient conflict, parameter "
         "space (Fig. 3), ablations (Fig. 4), sweeps (Fig. 5). Each writes CSV + PNG + JSON "
         "(see docs/analysis.md; needs the 'analysis' extra).",
    no_args_is_help=True)
app.add_typer(analyze_app, name="analyze")
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
    console.print(table)
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
    console.print(table)
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
    console.print(table)
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
    console.print(table)
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
