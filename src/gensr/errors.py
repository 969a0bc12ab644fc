"""Errors raised at gensr's boundaries (data files, configs, run directories, requests).

Every error names what was wrong and where, so the CLI can print it without a traceback.
"""

from __future__ import annotations


class GensrError(Exception):
    """Base class for errors that the CLI reports as a one-line message (exit code 2)."""


class DataError(GensrError):
    """Bad input data: names the file and, where known, the line and column."""

    def __init__(
        self,
        problem: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: str | None = None,
    ) -> None:
        self.problem = problem
        self.file = file
        self.line = line
        self.column = column
        where = []
        if file is not None:
            where.append(str(file))
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column '{column}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {problem}" if prefix else problem)


class ConfigError(GensrError):
    """A configuration value that is unknown, of the wrong type, or out of range."""


class RunError(GensrError):
    """A run directory or checkpoint that is missing, incomplete or does not match the data."""


#: how every one-line error about a damaged file ends
DAMAGED = "the file is damaged"


def damaged(path: object, what: str, detail: str, error: type[GensrError] = DataError,
            hint: str = "") -> GensrError:
    """The one-line error for a file that cannot be parsed (cut short, overwritten):
    ``PATH: not valid WHAT (DETAIL): the file is damaged[; HINT]``. The readers of each
    format (:mod:`gensr.files`, :func:`gensr.config.load_yaml`) raise it."""
    return error(f"{path}: not valid {what} ({detail}): {DAMAGED}" + (f"; {hint}" if hint else ""))
