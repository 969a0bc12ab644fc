"""Micro-batching of concurrent requests for the HTTP service (asyncio, no web framework).

Requests wait in a bounded queue; one worker takes the first waiting request, gathers more for
at most ``window_ms`` (or until ``max_batch``), and scores them together in one thread
(:meth:`Ranker.rank_prepared`) while the event loop keeps accepting connections. A full queue
is refused at once (:class:`OverloadedError`, HTTP 503) instead of growing without bound;
each request gets its own result or error, so one failing request never affects the others.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from gensr.serve.errors import OverloadedError


@dataclass
class BatcherStats:
    """Counters for ``/healthz``: requests and batches scored, requests refused."""

    requests: int = 0
    batches: int = 0
    refused: int = 0
    largest_batch: int = 0


class MicroBatcher:
    """Collects concurrent submissions into batches for ``score_fn`` (run in one thread).

    ``score_fn(items) -> results`` must return one result (or Exception) per item, in order.
    """

    def __init__(self, score_fn: Callable[[Sequence[Any]], Sequence[Any]], *,
                 max_batch: int = 32, window_ms: float = 2.0, max_queue: int = 256) -> None:
        if max_batch < 1 or max_queue < 1 or window_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1, window_ms >= 0")
        self.score_fn = score_fn
        self.max_batch = int(max_batch)
        self.window = float(window_ms) / 1000.0
        self.max_queue = int(max_queue)
        self.stats = BatcherStats()
        self._queue: asyncio.Queue[tuple[Any, asyncio.Future]] | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self._busy = False

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done() and not self._closing

    async def start(self) -> None:
        """Start the worker (call from the event loop that will submit)."""
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="gensr-rank")
        self._closing = False
        self._worker = asyncio.create_task(self._run(), name="gensr-batcher")

    async def stop(self) -> None:
        """Finish what is queued, then stop the worker and its thread."""
        self._closing = True
        if self._queue is not None and self._worker is not None and not self._worker.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._drained(), timeout=30)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if self._queue is not None:  # anything left (worker died): fail it, never hang
            while not self._queue.empty():
                _, fut = self._queue.get_nowait()
                if not fut.done():
                    fut.set_exception(OverloadedError("the service is shutting down"))

    async def _drained(self) -> None:
        assert self._queue is not None
        while not self._queue.empty() or self._busy:
            await asyncio.sleep(0.005)

    async def submit(self, item: Any) -> Any:
        """Queue ``item`` and wait for its result; raises its error, or
        :class:`OverloadedError` at once when the queue is full or the service is stopping."""
        if self._queue is None or self._closing:
            raise OverloadedError("the service is shutting down")
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((item, fut))
        except asyncio.QueueFull:
            self.stats.refused += 1
            raise OverloadedError(f"the request queue is full ({self.max_queue} waiting); "
                                  "retry shortly") from None
        return await fut

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.window
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            live = [(item, fut) for item, fut in batch if not fut.done()]  # drop cancelled
            if not live:
                continue
            self._busy = True
            try:
                results = await loop.run_in_executor(
                    self._executor, self.score_fn, [item for item, _ in live])
            except Exception as err:  # noqa: BLE001 - the whole call failed: fail its requests
                results = [err] * len(live)
            finally:
                self._busy = False
            self.stats.requests += len(live)
            self.stats.batches += 1
            self.stats.largest_batch = max(self.stats.largest_batch, len(live))
            for (_, fut), result in zip(live, results):
                if fut.done():
                    continue
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)
