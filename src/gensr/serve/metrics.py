"""Prometheus metrics of the HTTP service (``GET /metrics``), with ``prometheus_client``.

Each app has its own registry (two services in one process never mix their counts):

* ``gensr_http_requests_total{route,method,status}`` and
  ``gensr_http_request_duration_seconds{route,method,status}`` (a histogram): every answered
  request, timed from its arrival in the app to its last byte. ``route`` is one of the app's
  paths or ``other`` and ``method`` a standard method or ``other``, so made-up paths and
  methods cannot grow the label set; status ``499``: the client closed the connection (or
  was timed out) before the answer;
* ``gensr_http_requests_in_flight``, ``gensr_http_connections_open``,
  ``gensr_http_connections_opened_total`` and
  ``gensr_http_connections_closed_total{reason}`` (``idle_timeout``, ``read_timeout``,
  ``evicted``, ``over_capacity``): the connection guards of :mod:`gensr.serve.protocol`;
* ``gensr_rank_requests_total``, ``gensr_rank_batches_total``, ``gensr_rank_refused_total``
  and ``gensr_rank_queue_depth``: the micro-batcher;
* ``gensr_model_info{model,data_fingerprint}`` (always 1).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

try:
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.exposition import choose_encoder
    from prometheus_client.registry import Collector
except ImportError as err:  # pragma: no cover - depends on the environment
    from gensr.serve.errors import ServeDependencyError

    raise ServeDependencyError(
        f"the HTTP service needs the [serve] extra ({err.name} is missing): "
        "pip install 'gensr[serve]'") from err

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# latency buckets (seconds): a tiny model answers in about a millisecond, a large one on CPU
# in tens to hundreds of milliseconds; the tail shows queueing
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
           30.0)
CLOSE_REASONS = ("idle_timeout", "read_timeout", "evicted", "over_capacity")
CLIENT_GONE = 499  # the status label of a request whose client left before the answer


@dataclass
class ConnectionStats:
    """Counters the connection guards and the concurrency limit keep (read by /metrics)."""

    open: int = 0
    opened: int = 0
    idle_timeout: int = 0  # idle connections closed
    read_timeout: int = 0  # requests not received in time (408, closed)
    evicted: int = 0  # idle connections closed to make room for a new one
    over_capacity: int = 0  # connections refused (503) with every slot busy
    in_flight: int = 0  # requests inside the app
    refused_in_flight: int = 0  # requests refused (503) at the concurrency limit


class _StateCollector(Collector):
    """Reads the connection stats and the batcher's counters at scrape time."""

    def __init__(self, stats: ConnectionStats, batcher: object | None,
                 model: str, fingerprint: str) -> None:
        self.stats = stats
        self.batcher = batcher
        self.model = model
        self.fingerprint = fingerprint

    def collect(self) -> Iterable[Metric]:
        s = self.stats
        yield GaugeMetricFamily("gensr_http_connections_open", "Open client connections.",
                                value=s.open)
        yield CounterMetricFamily("gensr_http_connections_opened",
                                  "Client connections accepted.", value=s.opened)
        closed = CounterMetricFamily("gensr_http_connections_closed",
                                     "Connections the server closed, by reason.",
                                     labels=["reason"])
        for reason in CLOSE_REASONS:
            closed.add_metric([reason], getattr(s, reason))
        yield closed
        yield GaugeMetricFamily("gensr_http_requests_in_flight",
                                "Requests inside the app now.", value=s.in_flight)
        yield CounterMetricFamily("gensr_http_refused_in_flight",
                                  "Requests refused (503) at the concurrency limit.",
                                  value=s.refused_in_flight)
        info = GaugeMetricFamily("gensr_model_info", "The model served (always 1).",
                                 labels=["model", "data_fingerprint"])
        info.add_metric([self.model, self.fingerprint], 1)
        yield info
        stats = getattr(self.batcher, "stats", None)
        if stats is not None:
            yield CounterMetricFamily("gensr_rank_requests", "Ranking requests scored.",
                                      value=stats.requests)
            yield CounterMetricFamily("gensr_rank_batches", "Micro-batches scored.",
                                      value=stats.batches)
            yield CounterMetricFamily("gensr_rank_refused",
                                      "Ranking requests refused: the queue was full.",
                                      value=stats.refused)
            yield GaugeMetricFamily("gensr_rank_queue_depth", "Requests waiting in the queue.",
                                    value=getattr(self.batcher, "queued", 0))


class Metrics:
    """A registry with the service's metrics; :meth:`middleware` records every request."""

    def __init__(self, stats: ConnectionStats, *, batcher: object | None = None,
                 model: str = "", fingerprint: str = "") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.stats = stats
        self.requests = Counter("gensr_http_requests", "HTTP requests answered.",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("gensr_http_request_duration_seconds",
                                 "Time from a request's arrival in the app to its last byte.",
                                 ["route", "method", "status"], buckets=BUCKETS,
                                 registry=self.registry)
        self.registry.register(_StateCollector(stats, batcher, model, fingerprint))

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition and its content type: Prometheus text (format 0.0.4), or
        OpenMetrics when the scraper's ``Accept`` header asks for it."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        labels = (route, method, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def middleware(self, app: Callable, routes: Callable[[], set[str]]) -> Callable:
        """ASGI middleware timing every HTTP request (``routes()``: the app's paths)."""
        metrics = self

        async def timed(scope: dict, receive: Callable, send: Callable) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            start = time.perf_counter()
            status = 500  # if the app fails before answering
            gone = False

            async def receive_watch() -> dict:
                nonlocal gone
                message = await receive()
                gone = gone or message["type"] == "http.disconnect"
                return message

            async def send_status(message: dict) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                await send(message)

            try:
                await app(scope, receive_watch, send_status)
                if gone and status == 500:
                    status = CLIENT_GONE  # closed or timed out before the answer
            finally:
                path = scope.get("path", "")
                route = path if path in routes() else "other"
                method = scope.get("method", "")
                metrics.observe(route, method if method in METHODS else "other", status,
                                time.perf_counter() - start)

        return timed
