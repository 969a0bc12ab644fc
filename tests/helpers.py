"""Helpers for tests (importable as ``helpers``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# ../shared/data beside the checkout; GENSR_SHARED_DATA points elsewhere (e.g. a worktree)
SHARED = Path(os.environ.get("GENSR_SHARED_DATA",
                             Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def shared_path(name: str) -> Path:
    """A folder of ../shared/data, or skip the test when it is absent (a user's clone)."""
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


def run_gensr(*args: str) -> tuple[int, str]:
    """Run ``gensr ARGS`` in-process through the console-script entry point (so errors get
    its one-line, exit-2 treatment); returns (exit code, stdout + stderr)."""
    import contextlib
    import io
    import sys
    from unittest import mock

    from gensr.cli import main

    out = io.StringIO()
    code = 0
    with mock.patch.object(sys, "argv", ["gensr", *map(str, args)]), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, out.getvalue()
