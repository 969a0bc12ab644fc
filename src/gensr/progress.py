"""One progress helper for every loop in gensr: a tqdm bar on a terminal, plain lines elsewhere.

A tqdm bar redraws itself with carriage returns many times a second; written to a file or a
pipe (a job log, ``| tee``, CI), that is thousands of frames on one "line". So
:func:`progress` draws a bar only when its stream is a terminal (or a notebook) and otherwise
prints a plain line now and then: at every ``LINE_PERCENT`` % of the total (bars that stay,
``leave=True``) and at least every ``LINE_SECONDS`` seconds, plus one closing line. Bars that
vanish when done (``leave=False``: inner loops such as evaluation batches) print only the
timed lines, so a short inner loop prints nothing at all.

``GENSR_PROGRESS`` overrides the choice: ``bars`` (always tqdm), ``lines`` (always lines),
``off`` (nothing), ``auto`` (default).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

from tqdm.auto import tqdm

ENV = "GENSR_PROGRESS"
MODES = ("auto", "bars", "lines", "off")
LINE_PERCENT = 10  # leave=True bars: a line at every 10 % of the total ...
LINE_SECONDS = 30.0  # ... and at least every 30 s (all bars); never more often than:
MIN_GAP_SECONDS = 1.0


def progress_mode(stream: IO[str] | None = None) -> str:
    """``bars``, ``lines`` or ``off``: what :func:`progress` does on ``stream`` (stderr)."""
    mode = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if mode not in MODES:
        mode = "auto"
    if mode != "auto":
        return mode
    stream = sys.stderr if stream is None else stream
    if "ipykernel" in sys.modules:  # a notebook: tqdm.auto draws a widget, no \r frames
        return "bars"
    try:
        return "bars" if stream.isatty() else "lines"
    except (AttributeError, ValueError):  # a closed or odd stream
        return "lines"


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
             enabled: bool = True, leave: bool = True, initial: int = 0,
             file: IO[str] | None = None, **tqdm_kwargs: Any) -> Any:
    """A progress bar over ``iterable`` (or driven by ``update``): tqdm's interface
    (iteration, ``update``, ``set_postfix``, ``close``, ``with``) whatever is drawn.

    ``enabled=False`` (a command's ``--no-progress``) shows nothing; ``file`` is the stream
    (default stderr). Other keyword arguments go to tqdm when a bar is drawn.
    """
    mode = progress_mode(file) if enabled else "off"
    if mode == "bars":
        return tqdm(iterable, total=total, desc=desc, leave=leave, initial=initial, file=file,
                    **tqdm_kwargs)
    if total is None and iterable is not None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    return LineProgress(iterable, total=total, desc=desc, leave=leave, initial=initial,
                        file=file, silent=mode == "off")


class LineProgress:
    """tqdm's interface, printing an occasional plain line instead of redrawing a bar."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None,
                 desc: str = "", leave: bool = True, initial: int = 0,
                 file: IO[str] | None = None, silent: bool = False) -> None:
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.leave = leave
        self.n = initial
        self.file = file
        self.silent = silent
        self.postfix = ""
        self.lines = 0  # printed so far
        self._initial = initial
        self._start = self._last = time.monotonic()
        self._next_percent = self._percent_after(initial)
        self._closed = False

    # --- tqdm's interface ---------------------------------------------------------------
    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("LineProgress without an iterable: call update() instead")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more steps; print a line if one is due."""
        self.n += n
        if self.silent or self._closed:
            return
        now = time.monotonic()
        if now - self._last < MIN_GAP_SECONDS:
            return
        due_time = now - self._last >= LINE_SECONDS
        due_percent = (self.leave and self.total is not None
                       and self._next_percent is not None
                       and 100 * self.n >= self._next_percent * self.total)
        if due_time or due_percent:
            if self.total and self.n >= self.total:
                return  # the closing line says it
            self._emit(now)

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True,
                    **kwargs: Any) -> None:
        """Values shown at the end of the next line (``loss=0.41``)."""
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        """Nothing to redraw."""

    def write(self, text: str) -> None:
        """Print ``text`` on its own line (as ``tqdm.write``)."""
        print(text, file=self.file or sys.stdout, flush=True)

    def close(self) -> None:
        """Print the closing line (bars that stay, and any bar that printed a line)."""
        if self._closed:
            return
        self._closed = True
        if self.silent or not (self.leave or self.lines):
            return
        self._emit(time.monotonic(), closing=True)

    # --- lines ---------------------------------------------------------------------------
    def _percent_after(self, n: int) -> int | None:
        if not self.total:
            return None
        done = 100 * n // self.total
        return min(100, (done // LINE_PERCENT + 1) * LINE_PERCENT)

    def _emit(self, now: float, closing: bool = False) -> None:
        elapsed = now - self._start
        steps = self.n - self._initial
        rate = f", {steps / elapsed:.3g} it/s" if elapsed > 0 and steps > 0 else ""
        if self.total:
            where = f"{100 * self.n / self.total:.0f}% ({self.n}/{self.total})"
        else:
            where = f"{self.n}"
        head = f"{self.desc}: " if self.desc else ""
        state = "done " if closing and self.total and self.n >= self.total else ""
        tail = f" {self.postfix}" if self.postfix else ""
        line = f"{head}{state}{where} in {_clock(elapsed)}{rate}{tail}"
        print(line, file=self.file or sys.stderr, flush=True)
        self.lines += 1
        self._last = now
        self._next_percent = self._percent_after(self.n)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s"
