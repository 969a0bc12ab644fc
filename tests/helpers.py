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
