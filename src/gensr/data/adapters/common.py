"""Pieces the Amazon-style adapters share: purchases -> rec + src interactions."""

from __future__ import annotations

import zlib

import polars as pl

from gensr.data.canonical import Report
from gensr.errors import DataError


def positive_count(name: str, value: object) -> int:
    """An adapter option that must be a positive integer (e.g. a k-core threshold)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"option {name} must be a positive integer, got {value!r}")
    return value


def purchases_to_interactions(
    purchases: pl.DataFrame, item_queries: pl.DataFrame, report: Report, seed: int = 0
) -> pl.DataFrame:
    """Each purchase (user, item, timestamp, event[, split]) yields a rec interaction and,
    when the item has at least one category query, a src interaction with one of them.

    ``item_queries`` has columns item, query (one row per category path of the item; Ai et
    al. 2017 count every (user, item, query) triple). gensr keeps one query per purchase,
    picked by a seeded hash of (user, item), so rec and src counts stay comparable.
    """
    grouped = item_queries.filter(pl.col("query") != "").group_by("item", maintain_order=True).agg(
        pl.col("query").unique(maintain_order=True).alias("queries")
    )
    rec = purchases.with_columns(pl.lit("rec").alias("behaviour"),
                                 pl.lit(None, dtype=pl.Utf8).alias("query"))
    src = purchases.join(grouped, on="item", how="left")
    n_missing = src.filter(pl.col("queries").is_null()).height
    report.drop("src twin not made: the item has no category query", n_missing)
    src = src.filter(pl.col("queries").is_not_null())
    src = src.with_columns(
        pl.struct("user", "item", "queries").map_elements(
            lambda r: r["queries"][zlib.crc32(f"{seed}|{r['user']}|{r['item']}".encode())
                                  % len(r["queries"])],
            return_dtype=pl.Utf8,
        ).alias("query"),
        pl.lit("src").alias("behaviour"),
    ).drop("queries")
    return pl.concat([rec, src.select(rec.columns)], how="vertical")
