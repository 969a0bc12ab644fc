"""Negative sampling, shared by the evaluation candidates and the trainer.

Evaluation instances get ``n_negatives`` items drawn uniformly, without replacement, from the
items the user never interacted with (in any split), seeded; the target is inserted at a
random position, so candidates are stored in a shuffled order and no model can profit from
where the target sits.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

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


#: rows of a draw processed at a time (bounds the temporary arrays, not the results)
BLOCK_ROWS = 1 << 18


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

    The draw: each round draws ``width`` items per unfinished row (``max(2n, n + 8)`` at
    first, four times more each further round) in one call, and each row keeps, in the order
    drawn, the first of those it has not yet and never interacted with, until it has ``n``.
    It is computed on whole arrays (no Python loop over rows), in blocks of
    :data:`BLOCK_ROWS` rows; a row whose first ``n`` draws are all fine (most rows on a
    large catalogue) takes them without the rest of its round being looked at.
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
    if n == 0:
        return out
    excl = None if exclude is None else np.asarray(exclude, dtype=np.int64)
    todo = np.arange(len(users))
    width = max(2 * n, n + 8)
    first_round = True
    while len(todo):
        draw = rng.integers(1, n_items + 1, size=(len(todo), width))
        still = []
        for b in range(0, len(todo), BLOCK_ROWS):
            rows = todo[b : b + BLOCK_ROWS]
            block = draw[b : b + BLOCK_ROWS]
            slow = np.arange(len(rows))
            if first_round:  # rows whose first n draws are distinct and allowed are done
                head = block[:, :n]
                fine = _allowed(interacted, users[rows], head, None if excl is None
                                else excl[rows]).all(axis=1) & _distinct_rows(head)
                out[rows[fine]] = head[fine]
                filled[rows[fine]] = n
                slow = np.flatnonzero(~fine)
            if len(slow):
                r = rows[slow]
                _take_fresh(out, filled, r, block[slow], n,
                            _allowed(interacted, users[r], block[slow],
                                     None if excl is None else excl[r]))
                still.append(r[filled[r] < n])
        todo = np.concatenate(still) if still else np.zeros(0, dtype=np.int64)
        width = min(4 * width, n_items + 1)
        first_round = False
    return out


def _allowed(interacted: InteractedSet, users: np.ndarray, draw: np.ndarray,
             exclude: np.ndarray | None) -> np.ndarray:
    ok = ~interacted.contains(users, draw)
    if exclude is not None:
        ok &= draw != exclude[:, None]
    return ok


def _distinct_rows(values: np.ndarray) -> np.ndarray:
    """Whether each row of ``values`` holds no value twice."""
    if values.shape[1] < 2:
        return np.ones(len(values), dtype=bool)
    ordered = np.sort(values, axis=1)
    return (ordered[:, 1:] != ordered[:, :-1]).all(axis=1)


def _take_fresh(out: np.ndarray, filled: np.ndarray, rows: np.ndarray, draw: np.ndarray,
                n: int, ok: np.ndarray) -> None:
    """Append to each of ``out[rows]`` (``filled`` of ``n`` done) its ``draw`` values, in
    order, that are ``ok``, not in the row yet and not drawn earlier in the row, up to ``n``."""
    have = out[rows]  # unfilled slots hold 0, which no draw is
    both = np.concatenate([have, draw], axis=1)
    order = np.argsort(both, axis=1, kind="stable")
    ordered = np.take_along_axis(both, order, axis=1)
    first_sorted = np.ones(both.shape, dtype=bool)
    first_sorted[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    first = np.empty_like(first_sorted)
    np.put_along_axis(first, order, first_sorted, axis=1)
    keep = ok & first[:, have.shape[1]:]
    rank = np.cumsum(keep, axis=1) + filled[rows][:, None]  # the slot (1-based) it would take
    keep &= rank <= n
    r, c = np.nonzero(keep)
    out[rows[r], rank[r, c] - 1] = draw[r, c]
    filled[rows] = np.minimum(rank[:, -1], n)


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
                "candidates": _list_column(cands.astype(np.int32)),
                "target_pos": target_pos.astype(np.int16),
            }
        )
    return tables


def _list_column(values: np.ndarray) -> pl.Series:
    """A (N, C) array as a polars ``List(Int32)`` column, built without Python lists."""
    n, c = values.shape
    offsets = pa.array(np.arange(n + 1, dtype=np.int64) * c, type=pa.int64())
    return pl.Series("candidates", pa.LargeListArray.from_arrays(
        offsets, pa.array(values.reshape(-1)))).cast(pl.List(pl.Int32))
