"""``gensr serve``: load a run, check the bind address, run the app under uvicorn.

fastapi and uvicorn are imported only here and in :mod:`gensr.serve.app`, so the core package
works without the ``[serve]`` extra (and names the extra when it is missing).
"""

from __future__ import annotations

import importlib
import ipaddress
import os
import signal
import stat
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from gensr.errors import ConfigError
from gensr.serve.errors import ServeDependencyError
from gensr.serve.ranker import Limits, Ranker

SERVE_EXTRA_MODULES = ("fastapi", "uvicorn", "prometheus_client")
API_KEY_ENV = "GENSR_API_KEY"
MAX_HEADER_BYTES = 16 * 1024  # request line + headers (h11's default), else 400
BACKLOG = 2048  # connections the kernel queues before uvicorn accepts them
FD_MARGIN = 128  # file descriptors kept for everything that is not a client connection


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
            f"use the model. Set {API_KEY_ENV} or pass --api-key-file FILE, or --insecure if "
            "the network is yours alone")


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def resolve_api_key(flag: str | None = None, file: str | Path | None = None, *,
                    env: Mapping[str, str] | None = None,
                    warn: Callable[[str], None] = _warn) -> str | None:
    """The service's API key: from ``--api-key-file`` (its one line), else the deprecated
    ``--api-key`` flag (every user of the machine can read it in ``ps``: a warning says so),
    else the ``GENSR_API_KEY`` environment variable. None: no key.

    Raises :class:`ConfigError` for a flag given with a file, an unreadable or empty file,
    or a key that cannot travel in an HTTP header (printable ASCII, no spaces)."""
    env = os.environ if env is None else env
    if flag is not None and file is not None:
        raise ConfigError("give the API key one way: --api-key-file or "
                          f"{API_KEY_ENV}, not also --api-key")
    if file is not None:
        key = _read_key_file(Path(file), warn)
    elif flag is not None:
        warn(f"--api-key shows the key to every user of this machine (ps, /proc); set "
             f"{API_KEY_ENV} or use --api-key-file instead (--api-key will be removed)")
        key = flag.strip()
        if not key:
            raise ConfigError("--api-key is empty")
    else:
        key = env.get(API_KEY_ENV, "").strip()
        if not key:
            return None
    if not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
        raise ConfigError("the API key must be printable ASCII without spaces (it travels "
                          "in the X-API-Key header)")
    return key


def _read_key_file(path: Path, warn: Callable[[str], None]) -> str:
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"--api-key-file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"--api-key-file {path} is a directory, not a file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--api-key-file {path} is not UTF-8 text") from None
    except OSError as err:
        raise ConfigError(f"--api-key-file {path}: cannot read it ({err.strerror})") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ConfigError(f"--api-key-file {path} is empty")
    if len(lines) > 1:
        raise ConfigError(f"--api-key-file {path} holds {len(lines)} lines: put the key "
                          "alone on one line")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warn(f"--api-key-file {path} can be read by other users: chmod 600 {path}")
    return lines[0]


def fit_connection_limit(max_connections: int, warn: Callable[[str], None] = _warn) -> int:
    """``max_connections``, lowered if the process may not open that many files: raises the
    soft file-descriptor limit towards the hard one when needed, and warns when it lowers."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max_connections + FD_MARGIN
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < need:
        fitted = max(1, soft - FD_MARGIN)
        warn(f"--max-connections {max_connections} needs {need} open files but this process "
             f"may open {soft} (ulimit -n): serving at most {fitted} connections")
        return fitted
    return max_connections


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
    max_concurrency: int | None = None,
    max_connections: int = 1000,
    idle_timeout: float = 5.0,
    read_timeout: float = 10.0,
    threads: int | None = None,
    log_level: str = "info",
    graceful_timeout: float = 10.0,
    precision: str = "auto",
    fast_path: bool = True,
    retrievers: list[str] | None = None,
    rerank_n: int = 100,
    index: str = "exact",
    retrieve_threads: int | str | None = "auto",
    fuse: float | dict[str, float] | None = None,
) -> None:
    """Serve ``run_dir``'s model on ``host:port`` until SIGINT/SIGTERM.

    Shutdown is graceful: uvicorn stops accepting connections, requests in flight finish
    (for at most ``graceful_timeout`` seconds), then the batcher drains and stops.
    ``threads`` sets torch's CPU threads for the process (default: torch's choice).
    ``precision``/``fast_path``: how GenSR scores (:func:`gensr.runs.prepare_inference`).
    ``max_concurrency`` (requests in progress, default ``max_queue + max_batch + 64``),
    ``max_connections``, ``idle_timeout`` and ``read_timeout`` (seconds) bound what clients
    may hold: see :mod:`gensr.serve.protocol` and docs/serving.md.
    ``retrievers`` (specs; None: lightgcn from the run's CF table for recommendation, bm25
    for search), ``rerank_n``, ``index``, ``retrieve_threads`` and ``fuse`` (the weight of
    the retriever's score in a fused ranking): the full-catalogue routes ``/v1/recommend``
    and ``/v1/search`` (:mod:`gensr.serve.full`).
    """
    for name, value in (("idle_timeout", idle_timeout), ("read_timeout", read_timeout)):
        if not value > 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be > 0 seconds, got {value}")
    for name, count in (("max_connections", max_connections),
                        ("max_concurrency", max_concurrency)):
        if count is not None and count < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {count}")
    check_bind(host, api_key, insecure)
    require_serve_extra()
    import torch
    import uvicorn

    if threads is not None:
        torch.set_num_threads(threads)

    from gensr.serve.app import ServeSettings, create_app
    from gensr.serve.metrics import ConnectionStats
    from gensr.serve.protocol import ConnectionLimits, guarded_protocol

    max_connections = fit_connection_limit(max_connections)
    ranker = Ranker.from_run(run_dir, data=data, device=device, limits=limits,
                             batch_size=max_batch, precision=precision, fast_path=fast_path,
                             retrievers=retrievers, rerank_n=rerank_n, index=index,
                             retrieve_threads=retrieve_threads, fuse=fuse)
    settings = ServeSettings(api_key=api_key or None, max_batch=max_batch, window_ms=window_ms,
                             max_queue=max_queue, max_body_bytes=max_body_bytes,
                             max_concurrency=max_concurrency, max_connections=max_connections,
                             idle_timeout_s=idle_timeout, read_timeout_s=read_timeout)
    stats = ConnectionStats()
    app = create_app(ranker, settings, connections=stats)
    protocol = guarded_protocol(ConnectionLimits(idle_timeout=idle_timeout,
                                                 read_timeout=read_timeout,
                                                 max_connections=max_connections,
                                                 max_header_bytes=MAX_HEADER_BYTES), stats)
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, access_log=log_level == "debug",
        timeout_graceful_shutdown=int(graceful_timeout),
        http=protocol,  # h11 with idle/read timeouts and a connection cap (evicting idle)
        ws="none",
        # requests in progress are limited in the app (503 + Retry-After): uvicorn's own
        # limit counts idle connections too, and answered 503 to everyone behind them
        limit_concurrency=None,
        timeout_keep_alive=idle_timeout,  # type: ignore[arg-type]
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        backlog=BACKLOG,
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
