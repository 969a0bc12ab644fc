"""From an adapter's raw log to the canonical data directory.

Every adapter produces a :class:`RawLog` (original ids, query *texts*) and a :class:`Report`;
:func:`write_canonical` does the rest the same way for all sources: id mapping, per-user event
order, the split, the evaluation candidates, the fingerprint, and an atomic write (a temporary
directory renamed into place, so a failure never leaves a half-written ``--out``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from gensr.data import schema
from gensr.data.candidates import build_candidates
from gensr.errors import DataError
from gensr.outputs import (
    MARKER,
    check_output_path,
    check_replaceable,
    is_no_space,
    make_dir,
    no_space,
    write_marker,
)

SplitStrategy = Literal["loo", "day", "given"]
#: what a full disk during the write leaves: nothing (the staging folder is removed)
NOTHING_WRITTEN = ("nothing was written (a previous --out is untouched): free some space and "
                   "run it again")

RAW_INTERACTION_COLUMNS = {
    "user": pl.Utf8,
    "item": pl.Utf8,
    "behaviour": pl.Utf8,
    "query": pl.Utf8,
    "timestamp": pl.Int64,
    "event": pl.Int64,
}


@dataclass
class Report:
    """What an adapter read, dropped (per reason) and kept; printed and written as JSON/MD."""

    source: str
    files: dict[str, int] = field(default_factory=dict)  # file -> rows read
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows dropped
    settings: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, object] = field(default_factory=dict)  # filled by write_canonical

    def read(self, file: str | Path, rows: int) -> None:
        self.files[Path(file).name] = self.files.get(Path(file).name, 0) + int(rows)

    def drop(self, reason: str, rows: int) -> None:
        if rows:
            self.dropped[reason] = self.dropped.get(reason, 0) + int(rows)

    def to_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "files_read": self.files,
            "dropped": self.dropped,
            "settings": self.settings,
            "notes": self.notes,
            "counts": self.counts,
        }

    def to_markdown(self) -> str:
        lines = [f"# Data report: {self.source}", "", "## Rows read", ""]
        lines += [f"- `{f}`: {n:,}" for f, n in self.files.items()]
        lines += ["", "## Rows dropped", ""]
        lines += [f"- {r}: {n:,}" for r, n in self.dropped.items()] or ["- none"]
        lines += ["", "## After filtering", ""]
        lines += [f"- {k}: {v:,}" if isinstance(v, int) else f"- {k}: {v}" for k, v in
                  _flatten(self.counts).items()]
        if self.settings:
            lines += ["", "## Settings", ""]
            lines += [f"- {k}: {v}" for k, v in self.settings.items()]
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


@dataclass
class RawLog:
    """An adapter's output, still in original ids.

    ``interactions`` columns: user, item (str), behaviour ("rec"|"src"), query (query text,
    null for rec), timestamp (int64), event (int64 tie-break inside a timestamp: rows of one
    user with equal (timestamp, event) are one event, e.g. a purchase that yields a rec and a
    src interaction), and optionally split ("train"|"valid"|"test") for ``split="given"``.
    ``items`` columns: item (str), text (str), category (str, levels joined by " > ").
    """

    interactions: pl.DataFrame
    items: pl.DataFrame
    name: str
    source_file: str = "interactions"
    items_file: str = "items"


def kcore_filter(
    inter: pl.DataFrame, min_user: int, min_item: int, report: Report, reason_prefix: str = ""
) -> pl.DataFrame:
    """Iteratively drop users with < ``min_user`` and items with < ``min_item`` interactions
    until a fixed point (the usual k-core filtering)."""
    while True:
        before = inter.height
        if min_user > 1:
            keep = inter.group_by("user").len().filter(pl.col("len") >= min_user)
            n = inter.height
            inter = inter.join(keep.select("user"), on="user", how="semi")
            report.drop(f"{reason_prefix}user with < {min_user} interactions", n - inter.height)
        if min_item > 1:
            keep = inter.group_by("item").len().filter(pl.col("len") >= min_item)
            n = inter.height
            inter = inter.join(keep.select("item"), on="item", how="semi")
            report.drop(f"{reason_prefix}item with < {min_item} interactions", n - inter.height)
        if inter.height == before:
            return inter


def _check_raw(raw: RawLog) -> pl.DataFrame:
    inter = raw.interactions
    missing = [c for c in ("user", "item", "behaviour", "timestamp") if c not in inter.columns]
    if missing:
        raise DataError(f"missing column(s) {missing}", file=raw.source_file)
    if "query" not in inter.columns:
        inter = inter.with_columns(pl.lit(None, dtype=pl.Utf8).alias("query"))
    if "event" not in inter.columns:
        inter = inter.with_columns(pl.lit(0, dtype=pl.Int64).alias("event"))
    bad = inter.filter(~pl.col("behaviour").is_in(list(schema.BEHAVIOURS)))
    if bad.height:
        raise DataError(
            f"behaviour must be 'rec' or 'src', found {bad['behaviour'][0]!r}",
            file=raw.source_file, column="behaviour",
        )
    return inter.with_columns(
        pl.col("user").cast(pl.Utf8),
        pl.col("item").cast(pl.Utf8),
        pl.col("timestamp").cast(pl.Int64),
        pl.col("event").cast(pl.Int64),
    )


def _assign_split(inter: pl.DataFrame, strategy: SplitStrategy, day_seconds: int) -> pl.DataFrame:
    if strategy == "given":
        if "split" not in inter.columns:
            raise DataError("split='given' needs a 'split' column")
        return inter
    if strategy == "loo":
        last = pl.col("seq").max().over("user_id")
        return inter.with_columns(
            pl.when(pl.col("seq") == last)
            .then(pl.lit("test"))
            .when(pl.col("seq") == last - 1)
            .then(pl.lit("valid"))
            .otherwise(pl.lit("train"))
            .alias("split")
        )
    if strategy == "day":
        day = pl.col("timestamp") // day_seconds
        last_day = inter.select(day.max()).item()
        return inter.with_columns(
            pl.when(day == last_day)
            .then(pl.lit("test"))
            .when(day == last_day - 1)
            .then(pl.lit("valid"))
            .otherwise(pl.lit("train"))
            .alias("split")
        )
    raise DataError(f"unknown split strategy {strategy!r} (use loo, day or given)")


def _targets_in_history(inter: pl.DataFrame, report: Report) -> dict[str, int]:
    """Valid/test interactions whose item the user already had earlier (smaller ``seq``), per
    split; a note in the report when there are any. Repeat consumption is real in some data,
    but when it is most instances, rows that are one event were probably read as two (a "copy
    the last item" scorer would then look perfect)."""
    out: dict[str, int] = {}
    for split in ("valid", "test"):
        targets = inter.filter(pl.col("split") == split).select(
            "user_id", "item_id", pl.col("seq").alias("target_seq"))
        earlier = targets.join(inter.select("user_id", "item_id", "seq"),
                               on=["user_id", "item_id"])
        hit = earlier.filter(pl.col("seq") < pl.col("target_seq")).unique(
            ["user_id", "item_id", "target_seq"]).height
        out[split] = hit
        if hit:
            share = hit / max(targets.height, 1)
            report.notes.append(
                f"warning: {hit:,} of {targets.height:,} {split} targets ({share:.0%}) are "
                "already in their own history (the user had the item before). Fine for "
                "repeat consumption; if rows that are one event (a purchase logged as a rec "
                "and a src row) were read as two, group them (csv: an `event` column)")
    return out


def fingerprint_arrays(inter: pl.DataFrame, n_items: int) -> str:
    """A content hash of the canonical interactions and item count (names the data)."""
    h = hashlib.sha256()
    for col in ("user_id", "item_id", "seq"):
        h.update(inter[col].to_numpy().astype(np.int64).tobytes())
    h.update(inter["behaviour"].cast(pl.Categorical).to_physical().to_numpy().tobytes())
    h.update(inter["query_id"].fill_null(0).to_numpy().astype(np.int64).tobytes())
    h.update(inter["split"].cast(pl.Categorical).to_physical().to_numpy().tobytes())
    h.update(str(n_items).encode())
    return h.hexdigest()[:16]


def write_canonical(
    raw: RawLog,
    out_dir: str | Path,
    report: Report,
    *,
    split: SplitStrategy,
    seed: int = 0,
    n_negatives: int = 99,
    day_seconds: int = 86_400,
    overwrite: bool = False,
) -> Path:
    """Map ids, order events, split, sample candidates and write the data directory atomically.

    Interactions naming an item absent from ``raw.items`` raise a :class:`DataError`; items
    that no kept interaction names are left out (counted in the report).
    """
    out_dir = Path(out_dir)
    check_output_dir(out_dir, overwrite)
    check_negatives(n_negatives)
    inter = _check_raw(raw)
    items = raw.items
    for col in ("item", "text"):
        if col not in items.columns:
            raise DataError(f"missing column '{col}'", file=raw.items_file)
    if "category" not in items.columns:
        items = items.with_columns(pl.lit("").alias("category"))
    items = items.with_columns(pl.col("item").cast(pl.Utf8), pl.col("text").fill_null(""),
                               pl.col("category").fill_null(""))
    dup = items.filter(pl.col("item").is_duplicated())
    if dup.height:
        raise DataError(f"duplicate item id {dup['item'][0]!r}", file=raw.items_file,
                        column="item")
    unknown = inter.join(items.select("item"), on="item", how="anti")
    if unknown.height:
        raise DataError(
            f"{unknown.height} interaction(s) name item(s) not in the items file, "
            f"e.g. {unknown['item'][0]!r}",
            file=raw.source_file, column="item",
        )
    n = inter.height
    inter = inter.filter(
        (pl.col("behaviour") == "rec")
        | (pl.col("query").is_not_null() & (pl.col("query").str.strip_chars() != ""))
    )
    report.drop("search interaction without a query", n - inter.height)
    if inter.height == 0:
        raise DataError("no interactions left after filtering", file=raw.source_file)

    # Ids: contiguous from 1 in order of first appearance; 0 is padding.
    inter = inter.with_row_index("_row")
    users = inter.group_by("user").agg(pl.col("_row").min()).sort("_row")
    users = users.with_columns(pl.int_range(1, users.height + 1, dtype=pl.Int32).alias("user_id"))
    kept_items = inter.group_by("item").agg(pl.col("_row").min()).sort("_row")
    kept_items = kept_items.with_columns(
        pl.int_range(1, kept_items.height + 1, dtype=pl.Int32).alias("item_id")
    )
    report.drop("item without interactions (items file)",
                items.height - kept_items.height)
    queries = (
        inter.filter(pl.col("query").is_not_null())
        .group_by("query").agg(pl.col("_row").min()).sort("_row")
    )
    queries = queries.with_columns(
        pl.int_range(1, queries.height + 1, dtype=pl.Int32).alias("query_id")
    )
    inter = (
        inter.join(users.select("user", "user_id"), on="user")
        .join(kept_items.select("item", "item_id"), on="item")
        .join(queries.select("query", "query_id"), on="query", how="left")
    )
    inter = inter.with_columns(
        pl.struct("timestamp", "event").rank("dense").over("user_id").cast(pl.Int32)
        .alias("seq") - 1
    )
    inter = _assign_split(inter, split, day_seconds)
    _check_split(inter, split, report)
    inter = inter.select(
        pl.col("user_id").cast(pl.Int32),
        pl.col("item_id").cast(pl.Int32),
        pl.col("behaviour"),
        pl.col("query_id").cast(pl.Int32),
        pl.col("timestamp").cast(pl.Int64),
        pl.col("seq").cast(pl.Int32),
        pl.col("split"),
    ).sort("user_id", "seq", "behaviour")

    items_out = (
        kept_items.select("item", "item_id")
        .join(items, on="item")
        .sort("item_id")
        .select(
            pl.col("item_id").cast(pl.Int32),
            pl.col("item").alias("orig_id"),
            pl.col("text"),
            pl.col("category"),
        )
    )
    n_items = items_out.height
    _check_negatives_fit(inter, users, n_items, n_negatives)
    cand_tables = build_candidates(inter, n_items, seed=seed, n_negatives=n_negatives)

    counts = dataset_counts(inter, n_items, queries.height)
    counts["targets_in_own_history"] = _targets_in_history(inter, report)
    report.counts = counts
    report.settings.update({"split": split, "seed": seed, "n_negatives": n_negatives})
    meta = {
        "schema_version": schema.SCHEMA_VERSION,
        "name": raw.name,
        "source": report.source,
        "fingerprint": fingerprint_arrays(inter, n_items),
        "n_users": users.height,
        "n_items": n_items,
        "n_queries": queries.height,
        "split": split,
        "seed": seed,
        "n_negatives": n_negatives,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "counts": counts,
        "settings": report.settings,
    }

    make_dir(out_dir.parent, DataError)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    except OSError as err:
        if is_no_space(err):
            raise no_space(out_dir.parent, DataError, err, NOTHING_WRITTEN) from None
        raise DataError(f"cannot write in {out_dir.parent}: "
                        f"{err.strerror or type(err).__name__}") from None
    try:
        _write(tmp / "interactions.parquet", inter, schema.INTERACTIONS)
        _write(tmp / "items.parquet", items_out, schema.ITEMS)
        _write(
            tmp / "queries.parquet",
            queries.select(pl.col("query_id"), pl.col("query").alias("text")),
            schema.QUERIES,
        )
        _write(
            tmp / "users.parquet",
            users.select(pl.col("user_id"), pl.col("user").alias("orig_id")),
            schema.USERS,
        )
        for split_name, table in cand_tables.items():
            _write(tmp / f"candidates_{split_name}.parquet", table, schema.CANDIDATES)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        (tmp / "report.json").write_text(json.dumps(report.to_dict(), indent=2))
        (tmp / "report.md").write_text(report.to_markdown())
        write_marker(tmp, "data")
        if out_dir.exists():
            check_output_dir(out_dir, overwrite)  # still ours (it may have changed meanwhile)
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, Exception) and not isinstance(err, DataError) \
                and is_no_space(err):
            raise no_space(out_dir, DataError, err, NOTHING_WRITTEN) from None
        raise
    return out_dir


def check_output_dir(out_dir: Path, overwrite: bool,
                     inputs: dict[str, Path | None] | None = None) -> None:
    """Refuse an ``--out`` that is a file, cannot be written, or is a non-empty folder that
    ``--overwrite`` may not replace (see :mod:`gensr.outputs`: only a data directory gensr
    wrote, holding only its own files and none of the ``inputs``)."""
    check_output_path(out_dir, DataError)
    if out_dir.is_dir() and any(p.name != MARKER for p in out_dir.iterdir()):
        if not overwrite:
            raise DataError(f"output directory {out_dir} exists and is not empty (use "
                            "--overwrite to replace a data directory gensr wrote)")
    check_replaceable(out_dir, "data", DataError, inputs)


def check_negatives(n_negatives: object) -> int:
    """``--negatives``: a positive integer (each evaluation instance ranks its target among
    that many sampled items)."""
    if isinstance(n_negatives, bool) or not isinstance(n_negatives, int) or n_negatives < 1:
        raise DataError(f"--negatives must be a positive integer (sampled items each target "
                        f"is ranked against), got {n_negatives!r}")
    return n_negatives


def _check_split(inter: pl.DataFrame, strategy: SplitStrategy, report: Report) -> None:
    """No training rows is an error; a split or task without rows is a note."""
    per = dict(inter.group_by("split").len().iter_rows())
    if not per.get("train"):
        hint = {"loo": "each user's last two events become valid and test, so users need "
                       "at least 3 events",
                "day": "the last two days become valid and test",
                "given": "the file's split column names no 'train' row"}[strategy]
        raise DataError(f"the {strategy} split leaves no training interactions ({hint}); "
                        f"rows per split: {per}")
    for split in ("valid", "test"):
        present = set(inter.filter(pl.col("split") == split)["behaviour"].unique().to_list())
        missing = [b for b in schema.BEHAVIOURS if b not in present]
        if missing:
            report.notes.append(f"the {split} split has no {' or '.join(missing)} "
                                "interactions: no such evaluation instances")


def _check_negatives_fit(
    inter: pl.DataFrame, users: pl.DataFrame, n_items: int, n_negatives: int
) -> None:
    """Raise a :class:`DataError` that names the user and the largest workable ``--negatives``
    when an evaluated user interacted with too much of a small catalogue to leave
    ``n_negatives`` items to sample from (nothing is dropped silently)."""
    evaluated = inter.filter(pl.col("split").is_in(["valid", "test"]))["user_id"].unique()
    free = (
        inter.filter(pl.col("user_id").is_in(evaluated.implode()))
        .group_by("user_id").agg(pl.col("item_id").n_unique().alias("n"))
        .with_columns((n_items - pl.col("n")).alias("free"))
        .sort("free", "user_id")
    )
    if free.height == 0 or free["free"][0] >= n_negatives:
        return
    worst = free.row(0, named=True)
    orig = users.filter(pl.col("user_id") == worst["user_id"])["user"][0]
    if worst["free"] < 1:
        raise DataError(
            f"user {orig!r} interacted with all {n_items} items, leaving none to sample its "
            "evaluation negatives from: filter such users out or add items")
    raise DataError(
        f"user {orig!r} interacted with {worst['n']} of the {n_items} items, leaving "
        f"{worst['free']} to sample its {n_negatives} evaluation negatives from; use "
        f"--negatives {worst['free']} (or fewer) for this small catalogue, or filter such "
        "users out"
    )


def _write(path: Path, frame: pl.DataFrame, arrow_schema: pa.Schema) -> None:
    table = frame.to_arrow().select(arrow_schema.names).cast(arrow_schema)
    pq.write_table(table, path, compression="zstd")


def dataset_counts(inter: pl.DataFrame, n_items: int, n_queries: int) -> dict[str, object]:
    """Users/items/queries and interactions per behaviour and split."""
    per = inter.group_by("split", "behaviour").len()
    table: dict[str, dict[str, int]] = {s: {b: 0 for b in schema.BEHAVIOURS}
                                        for s in schema.SPLITS}
    for s, b, n in per.iter_rows():
        table[s][b] = int(n)
    return {
        "users": int(inter["user_id"].n_unique()),
        "items": int(n_items),
        "queries": int(n_queries),
        "interactions": {
            b: int((inter["behaviour"] == b).sum()) for b in schema.BEHAVIOURS
        },
        "by_split": table,
    }
