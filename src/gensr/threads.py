"""Torch's CPU threads on a machine whose cores other processes share (``train.threads``).

torch starts one intra-op thread per core, and its OpenMP threads spin while they wait for each
other. When another busy process holds one of the cores, a thread that is descheduled holds up
every parallel op, and the spinning ones take the core from it: on 2 cores with one other busy
process, GenSR's training step took 1.37 s instead of 0.21 s (at 1 thread: 0.31 s, whatever
else runs; docs/speed.md). :class:`ThreadGuard` watches the cores this process may run on
(``/proc/stat``, Linux only) and uses one thread fewer per core that other processes keep busy,
and the threads back when they leave. The trainer polls one after every step (``train.threads``
= ``auto``), the evaluation after every batch (:func:`guarded`; ``GENSR_THREAD_GUARD=0`` turns
it off). A change of the thread count may change the rounding of the results, so a run that
must be bitwise reproducible on a shared machine sets a fixed count.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from gensr.errors import ConfigError

STAT = Path("/proc/stat")
SELF_STAT = Path("/proc/self/stat")
OTHERS_MARGIN = 0.2  # cores of other processes' load ignored (daemons, this tool's shell)


def parse_threads(value: str | int, key: str = "train.threads") -> int | str:
    """``auto`` (:class:`ThreadGuard`), ``torch`` (torch's own count, never changed) or a
    fixed number of threads >= 1."""
    text = str(value).strip().lower()
    if text in ("auto", "torch"):
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise ConfigError(f"{key} must be auto, torch or a number of threads >= 1, got {value!r}")


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def read_jiffies(cpus: list[int]) -> tuple[int, int, int] | None:
    """(busy, total) clock ticks of ``cpus`` since boot and this process's CPU ticks (user +
    system, all threads); None where ``/proc`` cannot be read."""
    try:
        lines = STAT.read_text().splitlines()
        own = SELF_STAT.read_text()
    except OSError:
        return None
    wanted = {f"cpu{c}" for c in cpus}
    busy = total = 0
    for line in lines:
        fields = line.split()
        if fields and fields[0] in wanted:
            ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
            total += sum(ticks)
            busy += sum(ticks) - ticks[3] - ticks[4]
    rest = own.rsplit(")", 1)[-1].split()  # the fields after "pid (comm)"
    if total == 0 or len(rest) < 13:
        return None
    return busy, total, int(rest[11]) + int(rest[12])  # utime, stime


class ThreadGuard:
    """Sets torch's intra-op threads to the cores other processes leave free.

    :meth:`poll` is cheap (a clock read) except every ``interval_s`` seconds, when it reads
    the CPU counters: the cores the other processes kept busy since the last reading, less
    :data:`OTHERS_MARGIN`, rounded up, are taken from the threads (never fewer than 1, never
    more than at the start). :meth:`restore` puts back the count it found.
    """

    def __init__(self, *, interval_s: float = 2.0, prime_s: float = 0.0,
                 log: Callable[[str], None] | None = None,
                 reader: Callable[[], tuple[int, int, int] | None] | None = None,
                 clock: Callable[[], float] = time.monotonic, cpus: list[int] | None = None
                 ) -> None:
        self.cpus = cpus if cpus is not None else allowed_cpus()
        self.start_threads = torch.get_num_threads()
        self.max_threads = min(self.start_threads, len(self.cpus))
        self.interval_s = interval_s
        self.log = log or (lambda _: None)
        self.reader = reader or (lambda: read_jiffies(self.cpus))
        self.clock = clock
        self.changes: list[tuple[float, int, float]] = []  # (time, threads, others' cores)
        self._last = self.reader()
        self._when = clock()
        if prime_s > 0 and self._last is not None:  # a first look, while this process waits
            time.sleep(prime_s)
            self.poll(force=True)

    def poll(self, force: bool = False) -> int | None:
        """Adjust the threads if the last ``interval_s`` (or, ``force``, the time since the
        last reading) asks for it; the new count or None."""
        now = self.clock()
        if (now - self._when < self.interval_s and not force) or self._last is None:
            return None
        sample = self.reader()
        last, self._last, self._when = self._last, sample, now
        if sample is None:
            return None
        busy, total, own = (a - b for a, b in zip(sample, last))
        if total <= 0:
            return None
        ticks_per_cpu = total / len(self.cpus)
        others = max(0.0, (busy - own) / ticks_per_cpu)  # cores kept busy by other processes
        want = len(self.cpus) - max(0, math.ceil(others - OTHERS_MARGIN))
        want = max(1, min(self.max_threads, want))
        if want == torch.get_num_threads():
            return None
        self.log(f"threads: {torch.get_num_threads()} -> {want} (other processes kept "
                 f"{others:.1f} of {len(self.cpus)} cores busy; train.threads=auto)")
        torch.set_num_threads(want)
        self.changes.append((now, want, round(others, 2)))
        return want

    def restore(self) -> None:
        """torch's thread count as it was when the guard started."""
        if torch.get_num_threads() != self.start_threads:
            torch.set_num_threads(self.start_threads)


@contextlib.contextmanager
def guarded(device: torch.device | str, *, interval_s: float = 1.0, prime_s: float = 0.0,
            log: Callable[[str], None] | None = None) -> Iterator[ThreadGuard | None]:
    """A :class:`ThreadGuard` (a first look over ``prime_s``, none by default: its wait would
    be paid on a quiet machine too) for the work inside the ``with``,
    torch's thread count restored after it; None (nothing watched) off CPU, at one thread, or
    where ``/proc/stat`` is missing, or with ``GENSR_THREAD_GUARD=0`` in the environment. The
    caller polls it between pieces of work."""
    if (torch.device(device).type != "cpu" or torch.get_num_threads() < 2 or not STAT.exists()
            or os.environ.get("GENSR_THREAD_GUARD", "1").strip() == "0"):
        yield None
        return
    guard = ThreadGuard(interval_s=interval_s, prime_s=prime_s, log=log)
    try:
        yield guard
    finally:
        guard.restore()
