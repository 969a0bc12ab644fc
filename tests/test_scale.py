"""Scale: the KuaiSAR load generator, the vectorised negative sampler (the same draw as the
row-by-row one it replaced), the list columns and the caches in the data directory."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from gensr.data.candidates import InteractedSet, sample_negatives
from gensr.errors import DataError


def _reference_sample_negatives(rng, users, interacted, n, *, exclude=None):
    """The row-by-row sampler gensr used before vectorising (kept here as the reference)."""
    n_items = interacted.n_items
    users = np.asarray(users, dtype=np.int64)
    out = np.zeros((len(users), n), dtype=np.int64)
    filled = np.zeros(len(users), dtype=np.int64)
    todo = np.arange(len(users))
    width = max(2 * n, n + 8)
    while len(todo):
        draw = rng.integers(1, n_items + 1, size=(len(todo), width))
        ok = ~interacted.contains(users[todo], draw)
        if exclude is not None:
            ok &= draw != exclude[todo][:, None]
        still = []
        for row, r in enumerate(todo):
            have = out[r, : filled[r]]
            fresh = draw[row][ok[row]]
            if filled[r]:
                fresh = fresh[~np.isin(fresh, have)]
            _, first = np.unique(fresh, return_index=True)
            fresh = fresh[np.sort(first)][: n - filled[r]]
            out[r, filled[r] : filled[r] + len(fresh)] = fresh
            filled[r] += len(fresh)
            if filled[r] < n:
                still.append(r)
        todo = np.asarray(still, dtype=np.int64)
        width = min(4 * width, n_items + 1)
    return out


@pytest.mark.parametrize("n_items,n,per_user,excl", [
    (5000, 3, 40, False),  # large catalogue: most rows done from their first draws
    (5000, 99, 200, True),
    (130, 96, 30, False),  # tight: rows need several rounds (Magazine-like)
    (40, 10, 25, True),
    (12, 1, 0, False),
])
def test_vectorised_sampler_draws_what_the_row_loop_drew(monkeypatch, n_items, n, per_user,
                                                         excl):
    rng = np.random.default_rng(n_items + n)
    n_users = 60
    users = np.repeat(np.arange(1, n_users + 1), per_user)
    items = rng.integers(1, n_items + 1, size=len(users))
    interacted = InteractedSet(users, items, n_items)
    rows = np.sort(rng.integers(1, n_users + 1, size=300))
    exclude = rng.integers(1, n_items + 1, size=len(rows)) if excl else None
    expected = _reference_sample_negatives(np.random.default_rng(5), rows, interacted, n,
                                           exclude=exclude)
    monkeypatch.setattr("gensr.data.candidates.BLOCK_ROWS", 7)  # several blocks per round
    got = sample_negatives(np.random.default_rng(5), rows, interacted, n, exclude=exclude)
    np.testing.assert_array_equal(got, expected)
    assert not interacted.contains(rows, got).any()
    assert all(len(set(r)) == n for r in got.tolist())
    if exclude is not None:
        assert not (got == exclude[:, None]).any()


def test_sampler_refuses_a_user_without_enough_items():
    interacted = InteractedSet(np.array([1, 1, 1]), np.array([1, 2, 3]), 5)
    with pytest.raises(DataError, match="user id 1 has only 2 items"):
        sample_negatives(np.random.default_rng(0), np.array([1]), interacted, 3)
