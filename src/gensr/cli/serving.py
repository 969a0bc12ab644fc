"""``gensr rank`` and ``gensr serve``: rankings from a trained run."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from gensr.cli.common import (
    _fast_path_option,
    _fuse_option,
    _parse_fuse,
    _precision_option,
    app,
    console,
)


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
    fuse: list[str] | None = _fuse_option(),
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
                   rerank_n=rerank_n, keep_consumed=keep_consumed, index=index,
                   fuse=_parse_fuse(fuse))
        return
    if retriever or keep_consumed or fuse:
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
               index, fuse=None) -> None:
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
                             rerank_n=rerank_n, index=index, fuse=fuse)
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
    fuse: list[str] | None = _fuse_option(),
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

    from gensr.runs import unfinished_warning

    unfinished = unfinished_warning(run_dir)  # served, but never without a word
    if unfinished:
        console.print(unfinished, highlight=False, soft_wrap=True)
    serve(run_dir, host=host, port=port, api_key=resolve_api_key(api_key, api_key_file),
          insecure=insecure, data=data, device=device,
          limits=Limits(max_candidates=max_candidates, max_query_chars=max_query_chars),
          max_batch=max_batch, window_ms=window_ms, max_queue=max_queue,
          max_body_bytes=max_body_bytes, max_concurrency=max_concurrency,
          max_connections=max_connections, idle_timeout=idle_timeout,
          read_timeout=read_timeout, threads=threads, log_level=log_level,
          precision=precision, fast_path=fast_path, retrievers=retriever or None,
          rerank_n=rerank_n, index=index, retrieve_threads=threads_of_retrieval,
          fuse=_parse_fuse(fuse))
