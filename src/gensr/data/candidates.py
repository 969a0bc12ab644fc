"""Negative sampling, shared by the evaluation candidates and the trainer.

Evaluation instances get ``n_negatives`` items drawn uniformly, without replacement, from the
items the user never interacted with (in any split), seeded; the target is inserted at a
random position, so candidates are stored in a shuffled order and no model can profit from
where the target sits.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from gensr.errors import DataError


class InteractedSet:
    """Membership test for (user, item) pairs, vectorised with a sorted key array."""

    def __init__(self, users: np.ndarray, items: np.ndarray, n_items: int) -> None:
        self.n_items = int(n_items)
        self._keys = np.unique(users.astype(np.int64) * (self.n_items + 1) + items.astype(np.int64))
        self._per_user = np.bincount((self._keys // (self.n_items + 1)).astype(np.int64))

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Whether each (user, item) pair occurred; ``items`` is (N,) or (N, M)."""
        u = users.astype(np.int64)
        if items.ndim == 2:
            u = u[:, None]
        keys = u * (self.n_items + 1) + items.astype(np.int64)
        if len(self._keys) == 0:
            return np.zeros(keys.shape, dtype=bool)
        pos = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        return self._keys[pos] == keys

    def n_interacted(self, users: np.ndarray) -> np.ndarray:
        users = users.astype(np.int64)
        out = np.zeros(len(users), dtype=np.int64)
        ok = users < len(self._per_user)
        out[ok] = self._per_user[users[ok]]
        return out


def sample_negatives(
    rng: np.random.Generator,
    users: np.ndarray,
    interacted: InteractedSet,
    n: int,
    *,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """For each user, ``n`` distinct items in [1, n_items] it never interacted with.

    ``exclude`` (one item per row) is also kept out. Raises :class:`DataError` when a user has
    fewer than ``n`` items left to sample from.
    """
    n_items = interacted.n_items
    users = np.asarray(users, dtype=np.int64)
    available = n_items - interacted.n_interacted(users)
    if len(users) and int(available.min()) < n:
        bad = int(users[np.argmin(available)])
        raise DataError(
            f"user id {bad} has only {int(available.min())} items it never interacted with, "
            f"fewer than the {n} negatives asked for"
        )
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


def build_candidates(
    inter: pl.DataFrame, n_items: int, *, seed: int, n_negatives: int = 99
) -> dict[str, pl.DataFrame]:
    """One evaluation instance per valid/test interaction, with shuffled candidates."""
    interacted = InteractedSet(
        inter["user_id"].to_numpy(), inter["item_id"].to_numpy(), n_items
    )
    tables: dict[str, pl.DataFrame] = {}
    for offset, split in enumerate(("valid", "test")):
        rows = inter.filter(pl.col("split") == split)
        rng = np.random.default_rng([seed, offset])
        users = rows["user_id"].to_numpy()
        targets = rows["item_id"].to_numpy().astype(np.int64)
        negatives = sample_negatives(rng, users, interacted, n_negatives)
        cands = np.concatenate([targets[:, None], negatives], axis=1)
        perm = np.argsort(rng.random(cands.shape), axis=1)
        cands = np.take_along_axis(cands, perm, axis=1)
        target_pos = np.argmax(perm == 0, axis=1)
        tables[split] = pl.DataFrame(
            {
                "instance_id": np.arange(rows.height, dtype=np.int32),
                "user_id": users.astype(np.int32),
                "task": rows["behaviour"],
                "query_id": rows["query_id"],
                "seq": rows["seq"],
                "target_item": targets.astype(np.int32),
                "candidates": [c for c in cands.astype(np.int32)],
                "target_pos": target_pos.astype(np.int16),
            }
        )
    return tables
