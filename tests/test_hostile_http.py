"""The HTTP service under hostile clients: real ``gensr serve`` processes on 127.0.0.1.

* 400 idle connections held open while 200 real requests all get 200 (idle connections no
  longer count against the request limit), and past ``--max-connections`` the connection
  idle longest makes room;
* past ``--max-concurrency`` only the excess gets 503 with ``Retry-After``; the held
  requests still finish;
* slow clients (slowloris: headers a byte at a time, a body that stalls, a connection that
  never sends) are closed by the read and idle timeouts;
* ``/metrics`` speaks Prometheus text: request counters and latency histograms by route and
  status, connection and batcher state;
* the API key comes from ``GENSR_API_KEY`` or ``--api-key-file`` (never the process list);
* 50+ hostile requests (bad JSON, wrong types, huge bodies, unknown or negative ids, empty
  candidates, oversized history, non-UTF-8, broken HTTP framing) each get the right 4xx with
  a one-line JSON message and no traceback.

Every network test is bounded in connections, requests and time, and talks to loopback only.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from gensr.cli import app as cli_app
from gensr.errors import ConfigError
from gensr.serve.metrics import ConnectionStats
from gensr.serve.protocol import ConnectionLimits, guarded_protocol
from gensr.serve.server import fit_connection_limit, resolve_api_key
from test_serve_support import (
    LiveServer,
    free_port,
    one_torch_thread,  # noqa: F401 - an autouse fixture
    tiny_runs,
)

ENV_KEY = "env-key-5e7f0a"
FILE_KEY = "file-key-93bd21"
MAX_CANDIDATES = 150
MAX_QUERY_CHARS = 64
TIGHT = {"max_concurrency": 4, "max_connections": 8, "read_timeout": 3.0, "idle_timeout": 2.0}


@pytest.fixture(scope="module")
def runs(tiny_data_dir, tmp_path_factory):
    return tiny_runs(tiny_data_dir, tmp_path_factory.getbasetemp() / "serve_runs")


@pytest.fixture(scope="module")
def servers(runs, tmp_path_factory):
    """``main``: default limits (idle timeout 60 s so idle connections stay), key from the
    environment; ``tight``: small limits, key from a file. Started together."""
    logs = tmp_path_factory.mktemp("hostile")
    key_file = logs / "api.key"
    key_file.write_text(FILE_KEY + "\n")
    key_file.chmod(0o600)
    main = LiveServer(runs["pop"], logs / "main.log", "--idle-timeout", "60",
                      "--max-candidates", str(MAX_CANDIDATES), "--max-query-chars",
                      str(MAX_QUERY_CHARS), env={"GENSR_API_KEY": ENV_KEY})
    tight = LiveServer(runs["pop"], logs / "tight.log", "--api-key-file", str(key_file),
                       "--max-concurrency", str(TIGHT["max_concurrency"]),
                       "--max-connections", str(TIGHT["max_connections"]),
                       "--read-timeout", str(TIGHT["read_timeout"]),
                       "--idle-timeout", str(TIGHT["idle_timeout"]),
                       env={"GENSR_API_KEY": ""})
    try:
        yield {"main": main.wait_ready(), "tight": tight.wait_ready()}
    finally:
        main.stop()
        tight.stop()


@pytest.fixture(scope="module")
def items(tiny_data) -> list[str]:
    return tiny_data.items.sort("item_id")["orig_id"].head(10).to_list()


# --- helpers ---------------------------------------------------------------------------------
def _key(server: LiveServer) -> dict[str, str]:
    return {"X-API-Key": ENV_KEY if "--api-key-file" not in server.proc.args else FILE_KEY}


def _metrics(server: LiveServer) -> dict[tuple[str, frozenset], float]:
    resp = httpx.get(server.url + "/metrics", headers=_key(server), timeout=10)
    assert resp.status_code == 200, resp.text
    out = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def _metric(server: LiveServer, name: str, **labels: str) -> float:
    return _metrics(server).get((name, frozenset(labels.items())), 0.0)


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def _connect(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        socks.append(s)
    return socks


def _is_open(sock: socket.socket) -> bool:
    """Whether the server still holds ``sock`` open (nothing to read, not closed)."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def _read_response(sock: socket.socket, timeout: float) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response from ``sock`` (status 0: closed with no answer)."""
    sock.settimeout(timeout)
    buf = b""
    try:
        while True:
            if b"\r\n\r\n" in buf:
                head, _, body = buf.partition(b"\r\n\r\n")
                lengths = [line for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")]
                if lengths and len(body) >= int(lengths[0].split(b":")[1]):
                    break
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    if not buf:
        return 0, {}, b""
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def _raw(port: int, data: bytes, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (ConnectionResetError, BrokenPipeError):
            pass  # refused before the whole request was sent: the answer is waiting
        return _read_response(sock, timeout)


def _post_all(server: LiveServer, body: dict, n: int, workers: int = 8
              ) -> list[httpx.Response]:
    with httpx.Client(base_url=server.url, headers=_key(server), timeout=30) as client, \
            ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda _: client.post("/v1/rank", json=body), range(n)))


def _head(method: str, path: str, key: str | None = None, **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if key:
        lines.append(f"X-API-Key: {key}")
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _assert_one_line_error(status: int, body: bytes, code: str, text: str = "") -> None:
    assert b"Traceback" not in body
    out = json.loads(body)
    assert out["error"] == code, out
    message = out["message"]
    assert "\n" not in message and 0 < len(message) < 400, message
    assert text in message, (text, message)


# --- load: idle connections, the connection cap, the request limit -----------------------------
def test_400_idle_connections_do_not_take_the_capacity(servers, items):
    main = servers["main"]
    body = {"history": [{"item": items[0]}], "candidates": items[1:6], "top_k": 3}
    idle = _connect(main.port, 400)
    try:
        _wait_for(lambda: _metric(main, "gensr_http_connections_open") >= 400, 20,
                  "the server holds the 400 idle connections")
        start = time.monotonic()
        responses = _post_all(main, body, 200)
        wall = time.monotonic() - start
        codes = Counter(r.status_code for r in responses)
        print(f"\n400 idle connections held: {codes[200]}/200 requests got 200 in {wall:.2f} s "
              f"({dict(codes)})")
        assert codes == {200: 200}, codes
        assert all(r.json()["ranking"] == responses[0].json()["ranking"] for r in responses)
        assert wall < 60
        # nothing was evicted or timed out: the idle ones are all still there
        assert sum(_is_open(s) for s in idle) == 400
        assert _metric(main, "gensr_http_connections_closed_total", reason="evicted") == 0
        assert _metric(main, "gensr_http_connections_open") >= 400
    finally:
        for s in idle:
            s.close()


def test_past_the_connection_cap_the_idle_longest_make_room(servers, items):
    tight = servers["tight"]
    cap = TIGHT["max_connections"]
    before = _metric(tight, "gensr_http_connections_closed_total", reason="evicted")
    idle = _connect(tight.port, 400)
    try:
        responses = _post_all(tight, {"candidates": items[:4]}, 200, workers=3)
        assert Counter(r.status_code for r in responses) == {200: 200}
        evicted = _metric(tight, "gensr_http_connections_closed_total",
                          reason="evicted") - before
        timed_out = _metric(tight, "gensr_http_connections_closed_total",
                            reason="idle_timeout")
        assert evicted + timed_out >= 400 - cap, (evicted, timed_out)
        assert evicted > 0
        assert _metric(tight, "gensr_http_connections_open") <= cap
        assert sum(_is_open(s) for s in idle) <= cap
    finally:
        for s in idle:
            s.close()


def test_past_the_request_limit_only_the_excess_gets_503(servers, items):
    tight = servers["tight"]
    limit = TIGHT["max_concurrency"]
    body = json.dumps({"candidates": items[:3]}).encode()
    head = _head("POST", "/v1/rank", FILE_KEY, Content_Type="application/json",
                 Content_Length=str(len(body)))
    held = _connect(tight.port, limit)
    try:
        for s in held:  # a whole head and part of the body: a request in progress
            s.sendall(head + body[:5])
        _wait_for(lambda: _metric(tight, "gensr_http_requests_in_flight") == limit, 2,
                  f"{limit} requests in flight")
        refused_before = _metric(tight, "gensr_http_refused_in_flight_total")
        with httpx.Client(base_url=tight.url, headers=_key(tight), timeout=10) as client:
            busy = client.post("/v1/rank", json={"candidates": items[:3]})
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
            _assert_one_line_error(503, busy.content, "overloaded", f"limit of {limit}")
            assert client.get("/healthz").status_code == 200  # exempt: it costs nothing
        assert _metric(tight, "gensr_http_refused_in_flight_total") == refused_before + 1
        for s in held:  # the held requests finish and are served
            s.sendall(body[5:])
        answers = [_read_response(s, 10) for s in held]
        assert [status for status, _, _ in answers] == [200] * limit
        assert json.loads(answers[0][2])["n_candidates"] == 3
    finally:
        for s in held:
            s.close()
    with httpx.Client(base_url=tight.url, headers=_key(tight), timeout=10) as client:
        assert client.post("/v1/rank", json={"candidates": items[:3]}).status_code == 200


def test_slow_and_idle_clients_are_timed_out(servers):
    """Four slow clients at once, each closed by a timeout (bounded: about 3 s)."""
    tight = servers["tight"]
    read_timeout, idle_timeout = TIGHT["read_timeout"], TIGHT["idle_timeout"]

    def slowloris() -> tuple[float, int, bytes]:
        """A header line a byte every 0.2 s: never idle, never done."""
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", tight.port), timeout=10) as s:
            s.sendall(b"POST /v1/rank HTTP/1.1\r\nHost: x\r\n")
            s.settimeout(0.2)
            for byte in b"X-Slow: " + b"a" * 200:
                try:
                    s.sendall(bytes([byte]))
                    if s.recv(65536, socket.MSG_PEEK):
                        break
                except TimeoutError:
                    continue
                except OSError:
                    break
            status, _, body = _read_response(s, 5)
        return time.monotonic() - start, status, body

    def stalled_body() -> tuple[float, int, bytes]:
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", tight.port), timeout=10) as s:
            s.sendall(_head("POST", "/v1/rank", FILE_KEY, Content_Type="application/json",
                            Content_Length="100") + b'{"candidates": [')
            status, _, body = _read_response(s, read_timeout + 5)
        return time.monotonic() - start, status, body

    def silent(half_close: bool) -> tuple[float, int, bytes]:
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", tight.port), timeout=10) as s:
            if half_close:
                s.shutdown(socket.SHUT_WR)  # half-open: FIN sent, never a request
            status, _, body = _read_response(s, idle_timeout + 5)
        return time.monotonic() - start, status, body

    with ThreadPoolExecutor(4) as pool:
        jobs = [pool.submit(slowloris), pool.submit(stalled_body),
                pool.submit(silent, False), pool.submit(silent, True)]
        (t_loris, s_loris, b_loris), (t_body, s_body, b_body), \
            (t_idle, s_idle, _), (t_half, s_half, _) = [j.result(timeout=30) for j in jobs]
    assert s_loris == 408 and read_timeout - 0.5 <= t_loris < read_timeout + 3, t_loris
    _assert_one_line_error(408, b_loris, "request_timeout", "did not arrive within 3 s")
    assert s_body == 408 and read_timeout - 0.5 <= t_body < read_timeout + 3, t_body
    _assert_one_line_error(408, b_body, "request_timeout")
    assert s_idle == 0 and idle_timeout - 0.5 <= t_idle < idle_timeout + 3, t_idle
    assert s_half == 0 and t_half < idle_timeout + 3, t_half  # closed at once or when idle
    assert _metric(tight, "gensr_http_connections_closed_total", reason="read_timeout") >= 2


# --- the connection guards in-process: the cap with every connection busy --------------------
@contextmanager
def _guarded_server(limits: ConnectionLimits, stats: ConnectionStats, app: Callable
                    ) -> Iterator[int]:
    """uvicorn with the guarded protocol in a thread, around a trivial ASGI app."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", ws="none",
                            http=guarded_protocol(limits, stats), log_level="warning",
                            timeout_keep_alive=limits.idle_timeout, limit_concurrency=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        _wait_for(lambda: server.started, 10, "the in-process server starts")
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def test_with_every_connection_busy_a_new_one_gets_503_and_idle_ones_are_evicted_first():
    release = threading.Event()

    async def slow_app(scope, receive, send):
        while not release.is_set():  # a request in progress until released
            await asyncio.sleep(0.01)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    stats = ConnectionStats()
    limits = ConnectionLimits(idle_timeout=30, read_timeout=30, max_connections=3)
    with _guarded_server(limits, stats, slow_app) as port:
        # eviction picks the idle one (oldest activity), never a busy one
        busy_a, idle_b = _connect(port, 2)
        busy_a.sendall(_head("GET", "/a"))
        _wait_for(lambda: stats.open == 2, 5, "two connections")
        time.sleep(0.05)
        (partial_c,) = _connect(port, 1)
        partial_c.sendall(b"GET /c HTTP/1.1\r\nHost: x\r\n")  # a head still arriving
        _wait_for(lambda: stats.open == 3, 5, "three connections")
        (d,) = _connect(port, 1)
        _wait_for(lambda: stats.evicted == 1, 5, "one eviction")
        assert not _is_open(idle_b) and _is_open(busy_a) and _is_open(partial_c)
        (e,) = _connect(port, 1)
        _wait_for(lambda: stats.evicted == 2, 5, "a second eviction")
        assert not _is_open(partial_c) and _is_open(busy_a)
        # now every connection has a request in progress: a new one is refused
        d.sendall(_head("GET", "/d"))
        e.sendall(_head("GET", "/e"))
        _wait_for(lambda: stats.open == 3, 5, "three busy connections")
        (f,) = _connect(port, 1)
        f.sendall(_head("GET", "/f"))
        status, headers, body = _read_response(f, 5)
        assert status == 503 and headers["retry-after"] == "1"
        assert headers["connection"] == "close"
        _assert_one_line_error(status, body, "overloaded", "3 connections")
        assert stats.over_capacity == 1 and _is_open(busy_a)
        release.set()
        assert _read_response(busy_a, 5)[0] == 200
        for s in (busy_a, idle_b, partial_c, d, e, f):
            s.close()


# --- metrics ---------------------------------------------------------------------------------
def test_metrics_in_prometheus_text(servers, items):
    main = servers["main"]
    with httpx.Client(base_url=main.url, headers=_key(main), timeout=10) as client:
        for _ in range(3):
            assert client.post("/v1/rank", json={"candidates": items[:3]}).status_code == 200
        assert client.post("/v1/rank", json={"candidates": []}).status_code == 422
        assert client.get("/no/such/path/12345").status_code == 404
        assert client.request("BREW", "/v1/rank").status_code == 405
        resp = client.get("/metrics")
        assert client.get("/metrics", headers={"X-API-Key": "wrong"}).status_code == 401
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    with httpx.Client(base_url=main.url, headers=_key(main), timeout=10) as client:
        open_metrics = client.get("/metrics", headers={
            "Accept": "application/openmetrics-text; version=1.0.0"})
    assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
    assert open_metrics.text.rstrip().endswith("# EOF")
    text = resp.text
    assert "# TYPE gensr_http_requests_total counter" in text
    assert "# TYPE gensr_http_request_duration_seconds histogram" in text
    m = _metrics(main)
    ok = {"route": "/v1/rank", "method": "POST", "status": "200"}
    n_ok = m[("gensr_http_requests_total", frozenset(ok.items()))]
    assert n_ok >= 3
    assert m[("gensr_http_request_duration_seconds_count", frozenset(ok.items()))] == n_ok
    inf = frozenset({**ok, "le": "+Inf"}.items())
    assert m[("gensr_http_request_duration_seconds_bucket", inf)] == n_ok
    small = frozenset({**ok, "le": "0.001"}.items())
    assert m[("gensr_http_request_duration_seconds_bucket", small)] <= n_ok
    assert m[("gensr_http_request_duration_seconds_sum", frozenset(ok.items()))] > 0
    bad = {"route": "/v1/rank", "method": "POST", "status": "422"}
    assert m[("gensr_http_requests_total", frozenset(bad.items()))] >= 1
    # made-up paths and methods share one label: the label set cannot be grown by clients
    other = {"route": "other", "method": "GET", "status": "404"}
    assert m[("gensr_http_requests_total", frozenset(other.items()))] >= 1
    brew = {"route": "/v1/rank", "method": "other", "status": "405"}
    assert m[("gensr_http_requests_total", frozenset(brew.items()))] >= 1
    assert not any("12345" in str(labels) or "BREW" in str(labels) for _, labels in m)
    assert m[("gensr_rank_requests_total", frozenset())] >= 3
    assert m[("gensr_model_info", frozenset({"model": "pop", "data_fingerprint":
                                             _fingerprint(main)}.items()))] == 1
    for name in ("gensr_http_connections_open", "gensr_http_requests_in_flight",
                 "gensr_rank_queue_depth", "gensr_rank_batches_total"):
        assert (name, frozenset()) in m, name


def _fingerprint(server: LiveServer) -> str:
    card = httpx.get(server.url + "/v1/model", headers=_key(server), timeout=10).json()
    return card["data"]["fingerprint"]


def test_metrics_take_the_key_as_a_bearer_token_too(servers):
    tight = servers["tight"]
    ok = httpx.get(tight.url + "/metrics", headers={"Authorization": f"Bearer {FILE_KEY}"})
    assert ok.status_code == 200 and "gensr_http_requests_total" in ok.text
    assert httpx.get(tight.url + "/metrics").status_code == 401
    wrong = httpx.get(tight.url + "/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401


# --- the API key -------------------------------------------------------------------------------
@pytest.mark.parametrize("name,key", [("main", ENV_KEY), ("tight", FILE_KEY)])
def test_api_key_from_env_or_file_never_in_the_process_list(servers, items, name, key):
    server = servers[name]
    cmdline = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes()
    assert key.encode() not in cmdline and b"--api-key " not in cmdline
    body = {"candidates": items[:3]}
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.post("/v1/rank", json=body, headers={"X-API-Key": key}).status_code == 200
        for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": key + "x"},
                        {"X-API-Key": key.upper()}):
            resp = client.post("/v1/rank", json=body, headers=headers)
            assert resp.status_code == 401, headers
            _assert_one_line_error(401, resp.content, "unauthorized", "X-API-Key")
        assert client.get("/v1/model").status_code == 401
        card = client.get("/v1/model", headers={"X-API-Key": key})
        assert card.json()["serving"]["api_key_required"] is True and key not in card.text


def test_resolve_api_key(tmp_path):
    warnings: list[str] = []
    env = {"GENSR_API_KEY": " from-env "}
    assert resolve_api_key(env=env, warn=warnings.append) == "from-env"
    assert resolve_api_key(env={}, warn=warnings.append) is None
    assert resolve_api_key(env={"GENSR_API_KEY": "  "}, warn=warnings.append) is None
    assert warnings == []
    key = tmp_path / "key"
    key.write_text("\n  from-file  \n\n")
    key.chmod(0o600)
    assert resolve_api_key(file=key, env=env, warn=warnings.append) == "from-file"
    assert warnings == []
    key.chmod(0o644)
    assert resolve_api_key(file=key, env={}, warn=warnings.append) == "from-file"
    assert warnings == [f"--api-key-file {key} can be read by other users: chmod 600 {key}"]
    warnings.clear()
    assert resolve_api_key("on-the-line", env=env, warn=warnings.append) == "on-the-line"
    assert len(warnings) == 1 and "ps" in warnings[0] and "GENSR_API_KEY" in warnings[0]
    bad = [
        (dict(flag="a", file=key), "one way"),
        (dict(file=tmp_path / "missing"), "does not exist"),
        (dict(file=tmp_path), "is a directory"),
        (dict(flag="  "), "--api-key is empty"),
        (dict(env={"GENSR_API_KEY": "two words"}), "without spaces"),
        (dict(env={"GENSR_API_KEY": "clé"}), "printable ASCII"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ConfigError, match=message):
            resolve_api_key(**{"env": {}, "warn": warnings.append, **kwargs})
    for content, message in [(b"", "is empty"), (b"\n \n", "is empty"),
                             (b"one\ntwo\n", "holds 2 lines"), (b"\xff\xfe", "not UTF-8")]:
        key.write_bytes(content)
        with pytest.raises(ConfigError, match=message):
            resolve_api_key(file=key, env={}, warn=warnings.append)


def test_serve_command_key_errors_are_one_line(runs, tmp_path, monkeypatch):
    monkeypatch.delenv("GENSR_API_KEY", raising=False)
    key = tmp_path / "key"
    key.write_text("k")
    key.chmod(0o600)
    runner = CliRunner()
    res = runner.invoke(cli_app, ["serve", str(runs["pop"]), "--api-key", "k",
                                  "--api-key-file", str(key)])
    assert isinstance(res.exception, ConfigError) and "one way" in str(res.exception)
    res = runner.invoke(cli_app, ["serve", str(runs["pop"]), "--api-key-file",
                                  str(tmp_path / "nope")])
    assert isinstance(res.exception, ConfigError) and "does not exist" in str(res.exception)
    res = runner.invoke(cli_app, ["serve", str(runs["pop"]), "--host", "0.0.0.0"])
    assert isinstance(res.exception, ConfigError)
    assert "GENSR_API_KEY" in str(res.exception) and "--api-key-file" in str(res.exception)


def test_fit_connection_limit():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    warnings: list[str] = []
    try:
        assert fit_connection_limit(10, warn=warnings.append) == 10 and warnings == []
        if hard != resource.RLIM_INFINITY:  # more than the hard limit allows: lowered
            fitted = fit_connection_limit(hard * 2, warn=warnings.append)
            assert fitted == hard - 128 and "ulimit -n" in warnings[0]
            assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)  # raised
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --- hostile requests ----------------------------------------------------------------------------
J = {"Content-Type": "application/json"}


def _hostile_requests(items: list[str]) -> dict[str, tuple[dict, int, str, str]]:
    """name: (httpx request kwargs, status, error code, text the message must hold)."""
    ok = {"history": [{"item": items[0]}], "candidates": items[1:4]}

    def body(**changes):
        return {"json": {**ok, **changes}}

    def raw(data: bytes):
        return {"content": data, "headers": J}

    def hist(*entries):
        return body(history=list(entries))

    c0 = items[1].encode()
    return {
        # not JSON, or not UTF-8
        "truncated JSON": (raw(b'{"candidates": ["' + c0), 400, "invalid_json", "not valid"),
        "single quotes": (raw(b"{'candidates': ['" + c0 + b"']}"), 400, "invalid_json", ""),
        "comment in JSON": (raw(b'{"candidates": ["' + c0 + b'"]} // hi'), 400,
                            "invalid_json", ""),
        "two JSON documents": (raw(b'{"candidates": ["' + c0 + b'"]}{}'), 400, "invalid_json",
                               ""),
        "latin-1 body": (raw('{"candidates": ["café"]}'.encode("latin-1")), 400,
                         "invalid_json", "not valid JSON"),
        "overlong UTF-8": (raw(b'{"candidates": ["\xc0\xaf"]}'), 400, "invalid_json", ""),
        "binary garbage": (raw(bytes(range(256)) * 4), 400, "invalid_json", ""),
        "nesting 100,000 deep": (raw(b"[" * 100_000 + b"]" * 100_000), 400, "invalid_json",
                                 ""),
        "5,000-digit top_k": (raw(b'{"candidates": ["' + c0 + b'"], "top_k": ' + b"9" * 5000
                                  + b"}"), 400, "invalid_json", ""),
        # the body is JSON but not an object, or empty
        "empty body": (raw(b""), 422, "invalid_request", "missing"),
        "whitespace body": (raw(b"   \n "), 400, "invalid_json", ""),
        "JSON number": (raw(b"42"), 422, "invalid_request", "JSON object"),
        "JSON true": (raw(b"true"), 422, "invalid_request", "JSON object"),
        "JSON list of requests": ({"json": [ok, ok]}, 422, "invalid_request", "JSON object"),
        "empty object": ({"json": {}}, 422, "invalid_request", "candidates: required"),
        # candidates
        "no candidates": (body(candidates=[]), 422, "invalid_request", "candidates: empty"),
        "duplicate key, last empty": (raw(b'{"candidates": ["' + c0 + b'"], "candidates": []}'),
                                      422, "invalid_request", "candidates: empty"),
        "negative int id": (body(candidates=[-1]), 422, "invalid_request", "candidates[0]"),
        "negative string id": (body(candidates=["-1"]), 422, "unknown_item", "'-1'"),
        "padding id 0": (body(candidates=["0"]), 422, "unknown_item", "'0'"),
        "empty string id": (body(candidates=[""]), 422, "unknown_item", "''"),
        "NUL in an id": (body(candidates=["\u0000"]), 422, "unknown_item", "'\\x00'"),
        "lone surrogate id": (raw(b'{"candidates": ["\\ud800"]}'), 422, "unknown_item",
                              "candidates"),
        "60 KB id, echoed cut": (body(candidates=["x" * 60_000]), 422, "unknown_item", "…"),
        "40 unknown ids": (body(candidates=[f"NOPE{i}" for i in range(40)]), 422,
                           "unknown_item", "and 30 more"),
        "nested list id": (body(candidates=[[items[1]]]), 422, "invalid_request",
                           "candidates[0]"),
        "id as object": (body(candidates=[{"id": items[1]}]), 422, "invalid_request",
                         "candidates[0]"),
        "candidates an object": (body(candidates={"a": items[1]}), 422, "invalid_request",
                                 "candidates"),
        "candidates null": (body(candidates=None), 422, "invalid_request", "candidates"),
        "too many candidates": (body(candidates=[f"X{i}" for i in range(MAX_CANDIDATES + 1)]),
                                422, "invalid_request", f"at most {MAX_CANDIDATES}"),
        "repeated 5 KB id": (body(candidates=["y" * 5000] * 2), 422, "invalid_request",
                             "repeat"),
        # top_k
        "top_k NaN": (raw(b'{"candidates": ["' + c0 + b'"], "top_k": NaN}'), 422,
                      "invalid_request", "top_k"),
        "top_k Infinity": (raw(b'{"candidates": ["' + c0 + b'"], "top_k": Infinity}'), 422,
                           "invalid_request", "top_k"),
        "top_k -1": (body(top_k=-1), 422, "invalid_request", "top_k"),
        "top_k 1.5": (body(top_k=1.5), 422, "invalid_request", "top_k"),
        "top_k a list": (body(top_k=[1]), 422, "invalid_request", "top_k"),
        # query
        "query too long": (body(query="q" * (MAX_QUERY_CHARS + 1)), 422, "invalid_request",
                           f"at most {MAX_QUERY_CHARS}"),
        "query only spaces": (body(query=" \t "), 422, "invalid_request", "query is empty"),
        "query a list": (body(query=["a", "b"]), 422, "invalid_request", "query"),
        "query an object": (body(query={"$ne": ""}), 422, "invalid_request", "query"),
        # history
        "history of 10,001": (hist(*[{"item": items[0]}] * 10_001), 422, "invalid_request",
                              "at most 10000"),
        "history item 300 chars": (hist({"item": "h" * 300}), 422, "invalid_request",
                                   "history[0].item: too long"),
        "history item an int": (hist({"item": 5}), 422, "invalid_request", "history[0].item"),
        "history item null": (hist({"item": None}), 422, "invalid_request",
                              "history[0].item"),
        "history behaviour SRC": (hist({"item": items[0], "behaviour": "SRC"}), 422,
                                  "invalid_request", "history[0].behaviour"),
        "history unknown ids": (hist({"item": "GONE-1"}, {"item": "GONE-2"}), 422,
                                "unknown_item", "'GONE-1', 'GONE-2'"),
        "history a string": (body(history=items[0]), 422, "invalid_request", "history"),
        "history entry a list": (hist([items[0], "rec"]), 422, "invalid_request",
                                 "history[0]"),
        # fields, types, sizes
        "unknown field": (body(debug=True), 422, "invalid_request", "debug: unknown field"),
        "__proto__ field": (body(__proto__={"admin": True}), 422, "invalid_request",
                            "__proto__: unknown field"),
        "body over 1 MiB": (raw(b'{"candidates": ["' + b"x" * (1 << 20) + b'"]}'), 413,
                            "payload_too_large", "1048576 bytes"),
        "text/plain": ({"content": json.dumps(ok).encode(),
                        "headers": {"Content-Type": "text/plain"}}, 415,
                       "unsupported_media_type", "application/json"),
        "form encoded": ({"data": {"candidates": items[1]}}, 415, "unsupported_media_type",
                         "Content-Type"),
        "multipart": ({"files": {"f": ("r.json", json.dumps(ok).encode())}}, 415,
                      "unsupported_media_type", "multipart/form-data"),
    }


HOSTILE_NAMES = list(_hostile_requests(["A", "B", "C", "D"]))


@pytest.fixture(scope="module")
def hostile(items):
    return _hostile_requests(items)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_request(servers, hostile, name):
    kwargs, status, code, text = hostile[name]
    main = servers["main"]
    resp = httpx.post(main.url + "/v1/rank", headers={**kwargs.pop("headers", {}),
                                                       **_key(main)}, timeout=30, **kwargs)
    assert resp.status_code == status, (name, resp.status_code, resp.text[:300])
    _assert_one_line_error(status, resp.content, code, text)


def _framing(items: list[str]) -> dict[str, tuple[bytes, int, str, str]]:
    """name: (raw bytes sent, status, error code, text the message must hold)."""
    k = ENV_KEY
    post = "POST /v1/rank HTTP/1.1\r\nHost: x\r\nX-API-Key: " + k + \
        "\r\nContent-Type: application/json\r\n"
    good = json.dumps({"candidates": items[:2]}).encode()
    big_chunks = (b"%x\r\n" % 65536 + b"a" * 65536 + b"\r\n") * 17 + b"0\r\n\r\n"
    bad = "malformed HTTP/1.1"
    return {
        "Content-Length -1": ((post + "Content-Length: -1\r\n\r\n").encode(), 400,
                              "bad_request", bad),
        "Content-Length abc": ((post + "Content-Length: abc\r\n\r\n").encode(), 400,
                               "bad_request", bad),
        "two Content-Lengths": ((post + "Content-Length: 2\r\nContent-Length: 9\r\n\r\n{}")
                                .encode(), 400, "bad_request", bad),
        "header without colon": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n", 400,
                                 "bad_request", bad),
        "space before colon": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n", 400,
                               "bad_request", bad),
        "garbage request line": (b"HELLO\r\n\r\n", 400, "bad_request", bad),
        "TLS hello on plain HTTP": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 50,
                                    400, "bad_request", bad),
        "HTTP/1.1 without Host": (b"GET /healthz HTTP/1.1\r\n\r\n", 400, "bad_request", bad),
        "HTTP/0.9 request": (b"GET /healthz\r\n\r\n", 400, "bad_request", bad),
        "bad chunk size": ((post + "Transfer-Encoding: chunked\r\n\r\nzz\r\n").encode(), 400,
                           "bad_request", bad),
        "Transfer-Encoding gzip": ((post + "Transfer-Encoding: gzip\r\n\r\n").encode(), 400,
                                   "bad_request", bad),
        "20 KB header": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 20_000
                         + b"\r\n\r\n", 431, "headers_too_large", "16 KiB"),
        "20 KB URL": (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431,
                      "headers_too_large", "16 KiB"),
        "endless header": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 40_000,
                           431, "headers_too_large", "16 KiB"),
        "chunked body over 1 MiB": ((post + "Transfer-Encoding: chunked\r\n\r\n").encode()
                                    + big_chunks, 413, "payload_too_large", "1048576"),
        "2 MiB announced, 100-continue": ((post + "Content-Length: 2097152\r\n"
                                           "Expect: 100-continue\r\n\r\n").encode(), 413,
                                          "payload_too_large", "1048576"),
        "Content-Length and chunked": ((post + "Content-Length: 40\r\nTransfer-Encoding: "
                                        "chunked\r\n\r\n0\r\n\r\n").encode(), 422,
                                       "invalid_request", "missing"),
        "method BREW": (b"BREW /v1/rank HTTP/1.1\r\nHost: x\r\n\r\n", 405,
                        "method_not_allowed", ""),
        "path traversal": (b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", 404,
                           "not_found", ""),
        "HTTP/2 preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 404, "not_found", ""),
        "no key": (b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   + b"Content-Length: %d\r\n\r\n" % len(good) + good, 401, "unauthorized",
                   "X-API-Key"),
    }


FRAMING_NAMES = list(_framing(["A", "B"]))


@pytest.mark.parametrize("name", FRAMING_NAMES)
def test_hostile_http_framing(servers, items, name):
    data, status, code, text = _framing(items)[name]
    got, headers, body = _raw(servers["main"].port, data)
    assert got == status, (name, got, body[:300])
    assert headers["content-type"] == "application/json"
    _assert_one_line_error(got, body, code, text)


def test_all_this_left_the_servers_healthy_and_their_logs_clean(servers, items):
    """Last: after everything above, both still rank, and no traceback was logged."""
    total = len(HOSTILE_NAMES) + len(FRAMING_NAMES)
    assert len(HOSTILE_NAMES) >= 50 and total >= 70
    for server in servers.values():
        with httpx.Client(base_url=server.url, headers=_key(server), timeout=10) as client:
            assert client.get("/healthz").status_code == 200
            assert client.post("/v1/rank", json={"candidates": items[:3]}).status_code == 200
        assert "Traceback" not in server.log.read_text()
