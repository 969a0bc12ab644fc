"""uvicorn's HTTP/1.1 protocol (h11) with guards against slow and idle clients.

uvicorn alone has no header or body timeout (a client that sends half a request holds its
connection for ever), arms its keep-alive timeout only after a first response (a connection
that never sends a byte is never closed), and counts every open connection, idle or not,
against ``limit_concurrency``: a few hundred idle connections made it answer 503 to everyone.
:func:`guarded_protocol` makes a protocol class that:

* closes a connection idle for ``idle_timeout`` seconds, a fresh one included;
* answers ``408`` and closes when a request (head and body) has not fully arrived
  ``read_timeout`` seconds after its first byte (slowloris: headers a byte at a time);
* answers ``431`` when the request line and headers exceed ``max_header_bytes`` (h11
  alone checks only heads that arrive in pieces), and malformed HTTP with the service's
  JSON ``400`` (uvicorn's is plain text);
* at ``max_connections`` open connections, makes room for a new one by closing the one idle
  longest (no request in progress: idle or still sending its head); only when every
  connection has a request in progress is the new one answered ``503`` with
  ``Retry-After`` and closed.

Requests in progress are limited in the app (``max_concurrency``, :mod:`gensr.serve.app`),
so idle connections never take capacity from working ones.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass

from uvicorn.protocols.http.h11_impl import H11Protocol

from gensr.serve.metrics import ConnectionStats


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection timeouts and the connection cap (see the module docstring)."""

    idle_timeout: float = 5.0
    read_timeout: float = 10.0
    max_connections: int = 1000
    max_header_bytes: int = 16 * 1024  # request line + headers (h11's limit; else 400)


def _raw_response(status: int, reason: str, code: str, message: str,
                  headers: dict[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 response with the service's JSON error body; ``Connection:
    close`` (written straight to the socket, when h11 cannot answer: no request head yet)."""
    body = json.dumps({"error": code, "message": message, "details": []}).encode()
    lines = [f"HTTP/1.1 {status} {reason}", "content-type: application/json",
             f"content-length: {len(body)}", "connection: close",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _over_capacity_app(stats: ConnectionStats, max_connections: int) -> Callable:
    """The ASGI app a connection beyond the cap gets: 503, Retry-After, close."""
    body = json.dumps({
        "error": "overloaded", "details": [],
        "message": f"the service has {max_connections} connections with requests in "
                   "progress (its limit); retry shortly"}).encode()

    async def refuse(scope: dict, receive: Callable, send: Callable) -> None:
        stats.over_capacity += 1
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"retry-after", b"1"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    return refuse


class GuardedH11Protocol(H11Protocol):
    """:class:`H11Protocol` with idle and read timeouts and a connection cap with eviction.

    Use :func:`guarded_protocol` to get a subclass bound to its limits and stats.
    """

    limits: ConnectionLimits = ConnectionLimits()
    stats: ConnectionStats = ConnectionStats()

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.timeout_keep_alive = self.limits.idle_timeout
        self._read_timer: asyncio.TimerHandle | None = None
        self._read_cycle: object = None  # the cycle before the request being read
        self._last_active = 0.0
        self._head_open = False  # reading a request head: its size is counted
        self._head_size = 0  # bytes of the head before the last chunk's tail
        self._head_tail = b""  # the last 3 bytes seen (an end of head may straddle chunks)

    # --- connection life -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.stats.opened += 1
        self.stats.open += 1
        self._last_active = self.loop.time()
        if len(self.connections) > self.limits.max_connections and not self._make_room():
            self.app = _over_capacity_app(self.stats, self.limits.max_connections)
        # uvicorn arms the keep-alive (idle) timer only after a response: arm it now
        self._unset_keepalive_if_required()
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.connections:
            self.stats.open -= 1
        self._cancel_read_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._last_active = self.loop.time()
        if self._read_timer is None and (self.cycle is None or self.cycle.response_complete):
            # the first byte of a request: all of it must arrive within read_timeout
            self._read_cycle = self.cycle
            self._read_timer = self.loop.call_later(self.limits.read_timeout,
                                                    self._read_timed_out)
            self._head_open, self._head_size, self._head_tail = True, 0, b""
        if self._head_open and self._head_too_large(data):
            self._refuse(431, "Request Header Fields Too Large", "headers_too_large",
                         f"the request line and headers exceed "
                         f"{self.limits.max_header_bytes // 1024} KiB")
            return
        super().data_received(data)
        cycle = self.cycle
        if (self._read_timer is not None and cycle is not None
                and cycle is not self._read_cycle and not cycle.more_body):
            self._cancel_read_timer()  # the whole request is in

    def on_response_complete(self) -> None:
        self._last_active = self.loop.time()
        before = self.cycle
        super().on_response_complete()  # may start a pipelined request already received
        cycle = self.cycle
        if (self._read_timer is None and cycle is not None and cycle is not before
                and cycle.more_body):
            self._read_cycle = before
            self._read_timer = self.loop.call_later(self.limits.read_timeout,
                                                    self._read_timed_out)

    def timeout_keep_alive_handler(self) -> None:
        if not self.transport.is_closing():
            self.stats.idle_timeout += 1
        super().timeout_keep_alive_handler()

    def send_400_response(self, msg: str) -> None:
        """Malformed HTTP (h11 refused the bytes): the service's JSON error, then close."""
        cycle = self.cycle if self.cycle is not self._read_cycle else None
        if cycle is not None and cycle.response_started:
            self.transport.close()  # too late for an answer
            return
        if cycle is not None:  # the app waits for the body: it will see a disconnect
            cycle.disconnected = True
            cycle.message_event.set()
        self._cancel_read_timer()
        self.transport.write(_raw_response(
            400, "Bad Request", "bad_request",
            "malformed HTTP/1.1 request: the request line, a header or the body framing "
            "is invalid"))
        self.transport.close()

    # --- guards --------------------------------------------------------------------------
    def _head_too_large(self, data: bytes) -> bool:
        """Count the head's bytes until its blank line (h11 checks only heads that arrive
        in pieces: one read may hold a larger complete head)."""
        window = self._head_tail + data
        ends = [i for i in (window.find(b"\r\n\r\n"), window.find(b"\n\n")) if i >= 0]
        if ends:
            self._head_open = False
            size = self._head_size - len(self._head_tail) + min(ends)
        else:
            self._head_size += len(data)
            self._head_tail = window[-3:]
            size = self._head_size
        return size > self.limits.max_header_bytes

    def _refuse(self, status: int, reason: str, code: str, message: str) -> None:
        """Answer a request h11 has not parsed yet with a JSON error, then close."""
        self._cancel_read_timer()
        self.transport.write(_raw_response(status, reason, code, message))
        self.transport.close()

    def _cancel_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        self.stats.read_timeout += 1
        cycle = self.cycle if self.cycle is not self._read_cycle else None
        if cycle is None or not cycle.response_started:
            if cycle is not None:  # the app waits for the body: it will see a disconnect
                cycle.disconnected = True
                cycle.message_event.set()
            self.transport.write(_raw_response(
                408, "Request Timeout", "request_timeout",
                f"the request did not arrive within {self.limits.read_timeout:g} s of its "
                "first byte: the connection is closed"))
        self.transport.close()

    def _busy(self) -> bool:
        """Whether a request is in progress here (its head is in, its answer not sent)."""
        return self.cycle is not None and self.cycle is not self._read_cycle \
            and not self.cycle.response_complete

    def _make_room(self) -> bool:
        """Close the connection idle longest to stay within max_connections; False when
        every other connection has a request in progress."""
        live = [c for c in self.connections if c is not self and not c.transport.is_closing()]
        if len(live) < self.limits.max_connections:
            return True  # the excess is already closing
        idle = [c for c in live if isinstance(c, GuardedH11Protocol) and not c._busy()]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c._last_active)
        self.stats.evicted += 1
        victim._cancel_read_timer()
        victim.transport.close()
        return True


def guarded_protocol(limits: ConnectionLimits, stats: ConnectionStats
                     ) -> type[GuardedH11Protocol]:
    """A :class:`GuardedH11Protocol` subclass bound to ``limits`` and ``stats`` (pass it to
    ``uvicorn.Config(http=...)``)."""
    return type("GensrH11Protocol", (GuardedH11Protocol,), {"limits": limits, "stats": stats})
