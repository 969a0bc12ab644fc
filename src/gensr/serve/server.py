"""``gensr serve``: load a run, check the bind address, run the app under uvicorn.

fastapi and uvicorn are imported only here and in :mod:`gensr.serve.app`, so the core package
works without the ``[serve]`` extra (and names the extra when it is missing).
"""

from __future__ import annotations

import importlib
import ipaddress
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gensr.errors import ConfigError
from gensr.serve.errors import ServeDependencyError
from gensr.serve.ranker import Limits, Ranker

SERVE_EXTRA_MODULES = ("fastapi", "uvicorn")


def require_serve_extra() -> None:
    """Raise a clear error naming the ``[serve]`` extra when fastapi/uvicorn are missing."""
    missing = []
    for name in SERVE_EXTRA_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ServeDependencyError(
            f"gensr serve needs the [serve] extra ({', '.join(missing)} not installed): "
            "pip install 'gensr[serve]'")


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine (localhost, 127/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, api_key: str | None, insecure: bool) -> None:
    """Refuse to listen beyond loopback without an API key, unless ``insecure``."""
    if not is_loopback(host) and not api_key and not insecure:
        raise ConfigError(
            f"refusing to listen on {host} without an API key: anyone who can reach it could "
            "use the model. Pass --api-key KEY (or set GENSR_API_KEY), or --insecure if the "
            "network is yours alone")


def serve(
    run_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    api_key: str | None = None,
    insecure: bool = False,
    data: str | Path | None = None,
    device: str | None = None,
    limits: Limits | None = None,
    max_batch: int = 32,
    window_ms: float = 2.0,
    max_queue: int = 256,
    max_body_bytes: int = 1 << 20,
    threads: int | None = None,
    log_level: str = "info",
    graceful_timeout: float = 10.0,
    precision: str = "auto",
    fast_path: bool = True,
    retrievers: list[str] | None = None,
    rerank_n: int = 100,
    index: str = "exact",
) -> None:
    """Serve ``run_dir``'s model on ``host:port`` until SIGINT/SIGTERM.

    Shutdown is graceful: uvicorn stops accepting connections, requests in flight finish
    (for at most ``graceful_timeout`` seconds), then the batcher drains and stops.
    ``threads`` sets torch's CPU threads for the process (default: torch's choice).
    ``precision``/``fast_path``: how GenSR scores (:func:`gensr.runs.prepare_inference`).
    ``retrievers`` (specs; None: lightgcn from the run's CF table for recommendation, bm25
    for search), ``rerank_n`` and ``index``: the full-catalogue routes ``/v1/recommend`` and
    ``/v1/search`` (:mod:`gensr.serve.full`).
    """
    check_bind(host, api_key, insecure)
    require_serve_extra()
    import torch
    import uvicorn

    if threads is not None:
        torch.set_num_threads(threads)

    from gensr.serve.app import ServeSettings, create_app

    ranker = Ranker.from_run(run_dir, data=data, device=device, limits=limits,
                             batch_size=max_batch, precision=precision, fast_path=fast_path,
                             retrievers=retrievers, rerank_n=rerank_n, index=index)
    settings = ServeSettings(api_key=api_key or None, max_batch=max_batch, window_ms=window_ms,
                             max_queue=max_queue, max_body_bytes=max_body_bytes)
    app = create_app(ranker, settings)
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, access_log=log_level == "debug",
        timeout_graceful_shutdown=int(graceful_timeout),
        # connections beyond the queue, one batch and some health checks get a plain 503
        limit_concurrency=max_queue + max_batch + 64,
        server_header=False,
    )
    server = uvicorn.Server(config)
    with _signals_end_cleanly():
        server.run()


@contextmanager
def _signals_end_cleanly() -> Iterator[None]:
    """uvicorn handles SIGINT/SIGTERM (graceful shutdown), then re-raises the signal to the
    handler it found; a no-op handler there makes a graceful stop a normal exit (code 0)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, _stopped) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stopped(sig: int, frame: object) -> None:
    """A signal that arrives after uvicorn's graceful shutdown: nothing left to do."""
