"""A seeded **load generator** for the raw KuaiSAR CSVs: logs of a chosen size, KuaiSAR's shape.

This is a *load generator*, not a stand-in for real data: the users, items, queries and
clicks are random numbers drawn to have the sizes and skews of KuaiSAR (Sun et al. 2023), so
that every stage of gensr can be run and timed at KuaiSAR's scale without the real files.
Models trained on it learn nothing about real behaviour; its metrics mean nothing.

What it writes (the documented raw columns, see docs/data.md; ``--raw`` of
``gensr data prepare kuaisar``):

* ``rec_inter.csv``: user_id, item_id, playing_time, duration_ms, time, timestamp (Unix ms,
  written as a float as in the release), click (about half the rows), forward, like, follow,
  search, search_item_related;
* ``src_inter.csv``: one row per shown result of a search session: user_id,
  search_session_id, search_session_time, search_session_timestamp (ms), keyword (the
  query's word ids, ``"[20, 34, 3]"``), search_source, item_id, click_cnt, item_type. About
  60% of sessions have clicks, and those have one to several clicked results;
* ``item_features.csv``: item_id, caption (word ids), author_id, item_type, upload_time,
  upload_type and four levels of category (``{first..fourth}_level_category_{id,name,
  name_en}``; deeper levels are often ``0 / 空 / empty``);
* optionally ``user_features.csv`` (user_id and a few activity levels and one-hot features).

Shape: the paper's counts (14,605,716 rec rows, 5,059,445 search rows, 25,877 users,
6,890,707 items, 453,667 queries) scaled by ``interactions / 19,665,161``; item popularity,
query popularity and user activity are long-tailed (item rank ``r`` drawn with probability
∝ ``(r + 1)^-zipf``, default 0.8, which keeps about 3% of the items and half the clicks
through the 5-interaction filter); times are spread over ``days`` Beijing days with a daily
rhythm. Everything is drawn from
``numpy.random.default_rng([seed, part, chunk])``, so a size, seed and ``chunk_rows`` give
the same files, and the rows are made and written ``chunk_rows`` at a time: memory is bounded by the
chunk and the per-user/per-query tables, not by the size of the log.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from gensr.errors import DataError

#: KuaiSAR as released (the paper's Table 1)
PAPER = {"rec_rows": 14_605_716, "src_rows": 5_059_445, "users": 25_877,
         "items": 6_890_707, "queries": 453_667}
START_MS = 1_684_684_800_000  # 2023-05-22 00:00 Beijing time (UTC+8), KuaiSAR's first day
BEIJING_MS = 8 * 3600 * 1000
DAY_MS = 86_400_000
ITEM_TYPES = ("VIDEO", "IMAGE_ATLAS", "LIVE", "USER", "COMMODITY", "MUSIC", "ADVERT")
ITEM_TYPE_SHARE = (0.80, 0.07, 0.05, 0.04, 0.02, 0.01, 0.01)  # of search results
SEARCH_SOURCES = ("USER_INPUT", "HISTORY", "SUGGESTION", "HOT_LIST")
SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "po", "da", "fi")
#: categories per level (level 1 is the coarsest); level k + 1's parent is id // fan-out
LEVEL_SIZES = (40, 400, 2_400, 9_600)
MAX_SHOWN = 12  # results shown per search session, at most


@dataclass(frozen=True)
class LoadShape:
    """The sizes a generated log has (from :func:`shape_for`)."""

    interactions: int  # rec rows + src rows
    rec_rows: int
    src_rows: int
    users: int
    items: int
    queries: int
    days: int
    zipf: float
    seed: int


def shape_for(interactions: int, *, seed: int = 0, days: int = 19, zipf: float = 0.8,
              users: int | None = None, items: int | None = None,
              queries: int | None = None) -> LoadShape:
    """KuaiSAR's counts scaled to ``interactions`` raw rows (rec + src); ``users``, ``items``
    and ``queries`` override the scaled counts (tiny logs need more users than scaling
    gives to keep anyone after the 5-interaction filter)."""
    if interactions < 100:
        raise DataError(f"interactions must be at least 100, got {interactions}")
    if days < 3:
        raise DataError(f"days must be at least 3 (train, valid and test days), got {days}")
    if zipf <= 0:
        raise DataError(f"zipf must be positive, got {zipf}")
    scale = interactions / (PAPER["rec_rows"] + PAPER["src_rows"])
    rec_rows = round(interactions * PAPER["rec_rows"] / (PAPER["rec_rows"] + PAPER["src_rows"]))

    def scaled(key: str, given: int | None, floor: int) -> int:
        value = given if given is not None else max(floor, round(PAPER[key] * scale))
        if value < 1:
            raise DataError(f"{key} must be at least 1, got {value}")
        return int(value)

    return LoadShape(interactions=int(interactions), rec_rows=rec_rows,
                     src_rows=int(interactions) - rec_rows,
                     users=scaled("users", users, 20), items=scaled("items", items, 200),
                     queries=scaled("queries", queries, 20), days=int(days), zipf=float(zipf),
                     seed=int(seed))


def zipf_ranks(rng: np.random.Generator, n: int, size: int, a: float) -> np.ndarray:
    """``size`` ranks in [0, n) with P(rank r) ∝ (r + 1)^-a (continuous inverse-CDF draw)."""
    u = rng.random(size)
    if abs(a - 1.0) < 1e-9:
        r = np.exp(u * np.log(n + 1.0)) - 1.0
    else:
        lo, hi = 1.0, (n + 1.0) ** (1.0 - a)
        r = (lo + u * (hi - lo)) ** (1.0 / (1.0 - a)) - 1.0
    return np.minimum(r.astype(np.int64), n - 1)


def _word_lists(rng: np.random.Generator, n: int, min_len: int, max_len: int,
                vocab: int) -> pl.Series:
    """``n`` strings like ``"[20, 34, 3]"`` of ``min_len..max_len`` Zipf-distributed word ids."""
    lengths = rng.integers(min_len, max_len + 1, size=n)
    words = zipf_ranks(rng, vocab, int(lengths.sum()), 1.0) + 1
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    lists = pl.Series(pa.ListArray.from_arrays(pa.array(offsets), pa.array(words)))
    return ("[" + lists.cast(pl.List(pl.Utf8)).list.join(", ") + "]").alias("words")


def _pseudo_words(ids: np.ndarray, n_syllables: int, salt: int) -> list[str]:
    """Deterministic pronounceable names for category ids (the English category names)."""
    out = []
    for i in ids.tolist():
        h, parts = (i * 2_654_435_761 + salt) & 0xFFFFFFFF, []
        for _ in range(n_syllables):
            parts.append(SYLLABLES[h % len(SYLLABLES)])
            h //= len(SYLLABLES)
        out.append("".join(parts).capitalize())
    return out


def _beijing_strings(ms: np.ndarray, fmt: str) -> pl.Series:
    """Unix ms -> Beijing-time strings in ``fmt``."""
    return (pl.Series(ms + BEIJING_MS).cast(pl.Datetime("ms")).dt.strftime(fmt))


def _times(rng: np.random.Generator, n: int, days: int) -> np.ndarray:
    """Unix ms over ``days`` Beijing days, busier in the evening."""
    day = rng.integers(0, days, size=n)
    hour = np.clip(rng.normal(17.0, 4.5, size=n), 0.0, 23.999)  # evening peak
    return START_MS + day * DAY_MS + (hour * 3_600_000).astype(np.int64) \
        + rng.integers(0, 1000, size=n)


class _Writer:
    """Appends frames to one CSV file (header once)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = path.open("wb")
        self.rows = 0

    def write(self, frame: pl.DataFrame) -> None:
        frame.write_csv(self.handle, include_header=self.rows == 0)
        self.rows += frame.height

    def close(self) -> None:
        self.handle.close()


def _user_weights(shape: LoadShape) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative activity weights of the users (lognormal: a few very active users) for rec
    and for search (correlated, and about 1 in 8 users never searches)."""
    rng = np.random.default_rng([shape.seed, 0])
    base = rng.lognormal(0.0, 1.0, size=shape.users)
    search = base * rng.lognormal(0.0, 0.7, size=shape.users)
    search[rng.random(shape.users) < 0.125] = 0.0
    if search.sum() == 0:
        search[:] = 1.0
    return np.cumsum(base / base.sum()), np.cumsum(search / search.sum())


def _pick(rng: np.random.Generator, cumulative: np.ndarray, size: int) -> np.ndarray:
    return np.minimum(np.searchsorted(cumulative, rng.random(size), side="right"),
                      len(cumulative) - 1)


def _item_order(shape: LoadShape) -> np.ndarray:
    """Item id of each popularity rank (a fixed random permutation of 1..items)."""
    return np.random.default_rng([shape.seed, 1]).permutation(shape.items).astype(np.int64) + 1


def _write_rec(path: Path, shape: LoadShape, chunk_rows: int, users: np.ndarray,
               item_of_rank: np.ndarray) -> int:
    out = _Writer(path)
    try:
        for k, start in enumerate(range(0, shape.rec_rows, chunk_rows)):
            n = min(chunk_rows, shape.rec_rows - start)
            rng = np.random.default_rng([shape.seed, 2, k])
            ms = _times(rng, n, shape.days)
            click = (rng.random(n) < 0.5).astype(np.int8)
            duration = rng.integers(5_000, 300_000, size=n)
            played = (duration * np.where(click == 1, rng.uniform(0.3, 1.5, n),
                                          rng.uniform(0.0, 0.3, n))).astype(np.int64)
            out.write(pl.DataFrame({
                "user_id": _pick(rng, users, n),
                "item_id": item_of_rank[zipf_ranks(rng, shape.items, n, shape.zipf)],
                "playing_time": played,
                "duration_ms": duration,
                "time": _beijing_strings(ms, "%Y-%m-%d %H:%M:%S"),
                "timestamp": ms.astype(np.float64),
                "click": click,
                "forward": (click & (rng.random(n) < 0.01)).astype(np.int8),
                "like": (click & (rng.random(n) < 0.05)).astype(np.int8),
                "follow": (click & (rng.random(n) < 0.01)).astype(np.int8),
                "search": (rng.random(n) < 0.02).astype(np.int8),
                "search_item_related": (rng.random(n) < 0.01).astype(np.int8),
            }))
    finally:
        out.close()
    return out.rows


def _write_src(path: Path, shape: LoadShape, chunk_rows: int, users: np.ndarray,
               item_of_rank: np.ndarray) -> tuple[int, int]:
    """Sessions: a user, a time, a query (Zipf over the queries) and 1..MAX_SHOWN shown
    results; 60% of sessions have clicks (one to four results, the first shown ones likelier).
    Returns (rows, sessions)."""
    keywords = _word_lists(np.random.default_rng([shape.seed, 3]), shape.queries, 1, 5,
                           max(1000, shape.queries // 4))
    query_of_rank = np.random.default_rng([shape.seed, 4]).permutation(shape.queries)
    types = pl.Series(ITEM_TYPES, dtype=pl.Utf8)
    type_cdf = np.cumsum(ITEM_TYPE_SHARE)
    out = _Writer(path)
    sessions = 0
    try:
        k = 0
        while out.rows < shape.src_rows:
            rng = np.random.default_rng([shape.seed, 5, k])
            k += 1
            want = min(chunk_rows, shape.src_rows - out.rows)
            shown = np.minimum(rng.geometric(0.2, size=max(1, want // 4)), MAX_SHOWN)
            stop = int(np.searchsorted(np.cumsum(shown), want, side="left")) + 1
            shown = shown[:stop]
            shown[-1] -= max(0, int(shown.sum()) - want)  # the last session fills the size
            n_sessions = len(shown)
            session = np.repeat(np.arange(n_sessions), shown)
            rank = np.arange(len(session)) - np.repeat(np.cumsum(shown) - shown, shown)
            clicked = rng.random(n_sessions) < 0.6
            n_clicks = np.minimum(rng.integers(1, 5, size=n_sessions), shown)
            # click the first-ranked results likelier: a random score, lower for later ranks
            score = rng.random(len(session)) * (1.0 + 0.3 * rank)
            order = np.lexsort((score, session))
            pos = np.empty(len(session), dtype=np.int64)
            pos[order] = np.arange(len(session)) - np.repeat(np.cumsum(shown) - shown, shown)
            click = clicked[session] & (pos < n_clicks[session])
            click_cnt = np.where(click, 1 + (rng.random(len(session)) < 0.1), 0)
            ms = _times(rng, n_sessions, shape.days)
            query = query_of_rank[zipf_ranks(rng, shape.queries, n_sessions, 0.9)]
            item_type = np.searchsorted(type_cdf, rng.random(len(session)), side="right")
            out.write(pl.DataFrame({
                "user_id": _pick(rng, users, n_sessions)[session],
                "search_session_id": sessions + session + 1,
                "search_session_time": _beijing_strings(ms, "%Y-%m-%d %H:%M:%S")
                .gather(session),
                "search_session_timestamp": ms[session],
                "keyword": keywords.gather(query[session]),
                "search_source": pl.Series(SEARCH_SOURCES).gather(
                    rng.choice(len(SEARCH_SOURCES), size=n_sessions,
                               p=[0.7, 0.15, 0.1, 0.05])[session]),
                "item_id": item_of_rank[zipf_ranks(rng, shape.items, len(session), shape.zipf)],
                "click_cnt": click_cnt,
                "item_type": types.gather(np.minimum(item_type, len(ITEM_TYPES) - 1)),
            }))
            sessions += n_sessions
    finally:
        out.close()
    return out.rows, sessions


def _category_tables() -> list[tuple[list[str], list[str]]]:
    """(Chinese name, English name) of every category id per level (index 0 = no level)."""
    tables = []
    for level, size in enumerate(LEVEL_SIZES):
        ids = np.arange(size + 1)
        en = ["empty"] + _pseudo_words(ids[1:], 2 + (level > 1), salt=level)
        zh = ["空"] + [f"类目{level + 1}-{i}" for i in range(1, size + 1)]
        tables.append((zh, en))
    return tables


def _write_items(path: Path, shape: LoadShape, chunk_rows: int) -> int:
    """Captions of 0..20 word ids, an author, and a category path: a level-3 leaf drawn
    Zipf-like, its ancestors by fan-out, and a fourth level for one item in four."""
    names = _category_tables()
    name_zh = [pl.Series(zh, dtype=pl.Utf8) for zh, _ in names]
    name_en = [pl.Series(en, dtype=pl.Utf8) for _, en in names]
    out = _Writer(path)
    try:
        for k, start in enumerate(range(0, shape.items, chunk_rows)):
            n = min(chunk_rows, shape.items - start)
            rng = np.random.default_rng([shape.seed, 6, k])
            leaf = zipf_ranks(rng, LEVEL_SIZES[2], n, 0.8) + 1
            level = [(leaf - 1) // (LEVEL_SIZES[2] // LEVEL_SIZES[0]) + 1,
                     (leaf - 1) // (LEVEL_SIZES[2] // LEVEL_SIZES[1]) + 1, leaf]
            level[2] = np.where(rng.random(n) < 0.15, 0, level[2])  # no third level
            fourth = (leaf - 1) * 4 + rng.integers(1, 5, size=n)
            level.append(np.where((level[2] > 0) & (rng.random(n) < 0.25), fourth, 0))
            columns: dict[str, object] = {
                "item_id": np.arange(start + 1, start + n + 1, dtype=np.int64),
                "caption": _word_lists(rng, n, 0, 20, 200_000),
                "author_id": rng.integers(1, max(2, shape.items // 20), size=n),
                "item_type": np.where(rng.random(n) < 0.9, "NORMAL", "AD"),
                "upload_time": _beijing_strings(
                    START_MS - rng.integers(0, 400, size=n) * DAY_MS, "%Y-%m-%d"),
                "upload_type": pl.Series(["LongImport", "ShortImport", "Web", "Camera"])
                .gather(rng.integers(0, 4, size=n)),
            }
            for i, which in enumerate(("first", "second", "third", "fourth")):
                columns[f"{which}_level_category_id"] = level[i]
                columns[f"{which}_level_category_name"] = name_zh[i].gather(level[i])
                columns[f"{which}_level_category_name_en"] = name_en[i].gather(level[i])
            out.write(pl.DataFrame(columns))
    finally:
        out.close()
    return out.rows


def _write_users(path: Path, shape: LoadShape) -> int:
    rng = np.random.default_rng([shape.seed, 7])
    n = shape.users
    levels = ["UNKNOWN", "low_active", "middle_active", "high_active", "full_active"]
    frame = pl.DataFrame({
        "user_id": np.arange(n, dtype=np.int64),
        "search_active_level": pl.Series(levels).gather(rng.integers(0, 5, size=n)),
        "rec_active_level": pl.Series(levels).gather(rng.integers(0, 5, size=n)),
        **{f"onehot_feat{j}": rng.integers(0, 8, size=n) for j in range(4)},
    })
    frame.write_csv(path)
    return n


def generate_kuaisar(out: str | Path, interactions: int, *, seed: int = 0, days: int = 19,
                     zipf: float = 0.8, users: int | None = None, items: int | None = None,
                     queries: int | None = None, user_features: bool = False,
                     chunk_rows: int = 1_000_000, overwrite: bool = False) -> dict[str, object]:
    """Write a KuaiSAR-shaped raw log of ``interactions`` rows (rec + src) into ``out``.

    A **load generator**, not data: see the module docstring. Returns what was written
    (the shape, rows per file, search sessions), also saved as ``out/loadgen.json``.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"output directory {out} exists and is not empty (use --overwrite)")
    if chunk_rows < 1:
        raise DataError(f"chunk_rows must be at least 1, got {chunk_rows}")
    shape = shape_for(interactions, seed=seed, days=days, zipf=zipf, users=users, items=items,
                      queries=queries)
    out.mkdir(parents=True, exist_ok=True)
    rec_users, src_users = _user_weights(shape)
    item_of_rank = _item_order(shape)
    files = {"item_features.csv": _write_items(out / "item_features.csv", shape, chunk_rows),
             "rec_inter.csv": _write_rec(out / "rec_inter.csv", shape, chunk_rows, rec_users,
                                         item_of_rank)}
    files["src_inter.csv"], sessions = _write_src(out / "src_inter.csv", shape, chunk_rows,
                                                  src_users, item_of_rank)
    if user_features:
        files["user_features.csv"] = _write_users(out / "user_features.csv", shape)
    summary = {"generator": "gensr.data.loadgen (a load generator: synthetic, not KuaiSAR data)",
               "shape": asdict(shape), "rows": files, "search_sessions": sessions}
    (out / "loadgen.json").write_text(json.dumps(summary, indent=2))
    return summary
