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
