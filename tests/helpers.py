"""Helpers for tests (importable as ``helpers``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_path(name: str) -> Path:
    """A folder of ../shared/data, or skip the test when it is absent (a user's clone)."""
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path
