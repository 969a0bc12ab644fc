"""``csv``: your own S&R logs as two CSV files -> canonical log.

``interactions.csv`` (one row per interaction, a header line, extra columns ignored):

======== ==========================================================================
user      user id (any text)
item      item id (any text; must be in ``items.csv``)
timestamp integer Unix seconds, or an ISO 8601 date-time (``2024-03-01T18:30:00``,
          ``2024-03-01 18:30``, ``2024-03-01``, with or without ``Z``/``+02:00``; a time
          without offset is UTC)
behaviour ``rec`` (recommendation: a click/purchase with no query) or ``src`` (search)
query     the query text of a ``src`` row; empty for ``rec`` (the column may be left out
          when there is no ``src`` row)
event     optional: an event id (any text). Rows of one user with the same event id are
          **one event** (they share one ``seq``: a purchase found by search is a ``rec`` row
          and a ``src`` row of one event), so neither is in the other's history and both
          land in the same split. They must have the same timestamp.
======== ==========================================================================

Without an ``event`` column, rows of one user with the same item and the same timestamp are
one event (the rec and src *twins* the Amazon adapters write); every other row is its own
event.

``items.csv``: ``item,text[,category]``: the item id, its text (title, description…) and
optionally its category path with levels separated by " > " (``Books > Fiction``).

Both files are comma-separated unless ``sep`` says otherwise (``--option sep=tab``, or ``;``,
``|``, any one character). A timestamp may also be written as an integral decimal
(``881250949.0``); values of 1e11 or more (after the year 5000 as seconds) are refused as
probably milliseconds. A header that names a column twice is an error; rows that repeat an
earlier row exactly (interactions: same user, item, behaviour, query and time; items: the
same item, text and category) are dropped and counted in the report.

Events of one user are ordered by timestamp, then by line (events of one user with the same
timestamp stay in file order). ``min_user`` / ``min_item`` (default 1: keep everything)
k-core filter the interactions. Any bad value raises a :class:`~gensr.errors.DataError`
naming the file, line (the header is line 1) and column.
"""

from __future__ import annotations

import csv
import re
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from gensr.data.adapters.common import positive_count
from gensr.data.canonical import RawLog, Report, kcore_filter
from gensr.errors import DataError
from gensr.files import check_csv_end

INTERACTION_COLUMNS = ("user", "item", "timestamp", "behaviour")
ITEM_COLUMNS = ("item", "text")
SEPARATORS = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
SEP_NAMES = {"\t": "tab", ",": ",", ";": ";", "|": "|"}
# |seconds| from here on are after the year 5000: milliseconds (or µs) given as seconds
MAX_SECONDS = 10**11
INT64_MAX = 2**63 - 1
_INTEGRAL = re.compile(r"[+-]?\d+(\.0*)?")


def parse_sep(sep: object) -> str:
    """The ``sep`` option: ``tab``, ``comma``, ``semicolon``, ``pipe`` or one character."""
    if isinstance(sep, str):
        value = SEPARATORS.get(sep.lower(), sep)
        if len(value) == 1 and value not in "\"\r\n":
            return value
    raise DataError(f"option sep must be one character or tab, comma, semicolon, pipe; got "
                    f"{sep!r}")


def _header(path: Path, sep: str) -> list[str]:
    with path.open(newline="", encoding="utf-8", errors="replace") as fh:
        return [c.strip() for c in next(csv.reader(fh, delimiter=sep), [])]


def _check_header(path: Path, sep: str, required: tuple[str, ...]) -> None:
    """A header naming a column twice, or lacking one because of the separator, is an
    error that says so."""
    header = _header(path, sep)
    if not any(header):
        raise DataError("the file is empty (expected a header line)", file=str(path))
    seen: dict[str, int] = {}
    for n, name in enumerate(header, start=1):
        if name in seen:
            raise DataError(f"the header names column '{name}' twice (fields {seen[name]} and "
                            f"{n})", file=str(path), line=1, column=name)
        seen[name] = n
    missing = [c for c in required if c not in header]
    if missing:
        hint = ""
        line = sep.join(header)
        for other, label in SEP_NAMES.items():
            if other != sep and other in line and all(c in line.split(other) for c in
                                                      required[:1]):
                hint = (f"; the header looks {label}-separated: add --option "
                        f"sep={'tab' if other == chr(9) else other}")
                break
        raise DataError(f"missing column(s) {', '.join(missing)}{hint}", file=str(path),
                        line=1, column=missing[0])


def _read(path: Path, required: tuple[str, ...], sep: str = ",") -> pl.DataFrame:
    """The whole file as strings (stripped, empty -> null) plus ``_line``."""
    if not path.is_file():
        raise DataError("file is missing", file=str(path))
    if path.stat().st_size:
        _check_header(path, sep, required)
        check_csv_end(path, sep)
    try:
        frame = pl.read_csv(path, infer_schema=False, row_index_name="_line",
                            row_index_offset=2, separator=sep)
    except pl.exceptions.NoDataError:
        raise DataError("the file is empty (expected a header line)", file=str(path)) from None
    except pl.exceptions.PolarsError as err:
        _raise_ragged_row(path, sep)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"cannot read the CSV: {first}", file=str(path)) from None
    frame = frame.rename({c: c.strip() for c in frame.columns})
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"missing column(s) {', '.join(missing)}", file=str(path), line=1,
                        column=missing[0])
    text = [c for c in frame.columns if c != "_line"]
    return frame.with_columns(
        pl.col(c).str.strip_chars().replace("", None) for c in text
    )


def _raise_ragged_row(path: Path, sep: str = ",") -> None:
    """Name the first row whose number of fields differs from the header's (if any)."""
    with path.open(newline="", encoding="utf-8", errors="replace") as fh:
        rows = csv.reader(fh, delimiter=sep)
        header = next(rows, [])
        for row in rows:
            if row and len(row) != len(header):
                raise DataError(f"cannot read the CSV: {len(row)} fields where the header has "
                                f"{len(header)}", file=str(path), line=rows.line_num)


def _first_bad(frame: pl.DataFrame, bad: pl.Expr, path: Path, column: str, problem: str) -> None:
    """Raise ``problem`` for the first row where ``bad`` holds, naming its line and value."""
    rows = frame.filter(bad).select("_line", column)
    if rows.height:
        line, value = rows.row(0)
        found = "an empty value" if value is None else repr(value)
        raise DataError(f"{problem}, found {found}", file=str(path), line=int(line),
                        column=column)


def _require(frame: pl.DataFrame, path: Path, column: str) -> None:
    _first_bad(frame, pl.col(column).is_null(), path, column, f"{column} is required")


def parse_timestamp(value: str) -> int | None:
    """Integer Unix seconds, or an ISO 8601 date-time (UTC when it has no offset) -> seconds;
    None when it is neither."""
    text = value.strip()
    if _INTEGRAL.fullmatch(text):  # 881250949 or 881250949.0
        return int(text.split(".")[0])
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp())


def _read_items(path: Path, report: Report, sep: str = ",") -> pl.DataFrame:
    frame = _read(path, ITEM_COLUMNS, sep)
    report.read(path, frame.height)
    _require(frame, path, "item")
    same = [c for c in ("item", "text", "category") if c in frame.columns]
    n = frame.height
    frame = frame.unique(subset=same, keep="first", maintain_order=True)
    report.drop(f"{path.name} row repeating an earlier row exactly (kept the first)",
                n - frame.height)
    dup = frame.filter(pl.col("item").is_duplicated())
    if dup.height:
        item = dup["item"][0]
        lines = dup.filter(pl.col("item") == item)["_line"].sort()
        raise DataError(f"duplicate item id {item!r} (also on line {lines[0]})",
                        file=str(path), line=int(lines[1]), column="item")
    category = pl.col("category") if "category" in frame.columns else pl.lit(None)
    return frame.select(
        "item",
        pl.col("text").fill_null(""),
        category.cast(pl.Utf8).fill_null("").alias("category"),
    )


def _read_interactions(path: Path, items: pl.DataFrame, items_path: Path,
                       report: Report, sep: str = ",") -> pl.DataFrame:
    frame = _read(path, INTERACTION_COLUMNS, sep)
    report.read(path, frame.height)
    if frame.height == 0:
        raise DataError("no interactions in the file", file=str(path))
    for column in ("user", "item", "timestamp"):
        _require(frame, path, column)
    _first_bad(frame,
               ~pl.col("behaviour").is_in(["rec", "src"]).fill_null(False), path, "behaviour",
               "behaviour must be 'rec' or 'src'")
    has_query = "query" in frame.columns
    if not has_query:
        frame = frame.with_columns(pl.lit(None, dtype=pl.Utf8).alias("query"))
    src_without = frame.filter((pl.col("behaviour") == "src") & pl.col("query").is_null())
    if src_without.height:
        column = "query" if has_query else None
        raise DataError("a 'src' (search) row needs a query" + (
            "" if has_query else ": the file has no 'query' column"),
            file=str(path), line=int(src_without["_line"][0]), column=column)

    stamps = frame["timestamp"].unique().to_list()
    seconds = {s: parse_timestamp(s) for s in stamps}
    huge = [s for s, v in seconds.items() if v is not None and abs(v) >= MAX_SECONDS]
    if huge:
        beyond = [s for s in huge if abs(seconds[s]) > INT64_MAX]  # type: ignore[arg-type]
        _first_bad(frame, pl.col("timestamp").is_in(beyond or huge), path, "timestamp",
                   "timestamp is beyond the 64-bit integer range" if beyond else
                   "timestamp is after the year 5000 as Unix seconds: it looks like "
                   "milliseconds (divide by 1000, or write ISO 8601 date-times)")
    frame = frame.with_columns(
        pl.col("timestamp").replace_strict(seconds, return_dtype=pl.Int64, default=None)
        .alias("seconds")
    )
    _first_bad(frame, pl.col("seconds").is_null(), path, "timestamp",
               "timestamp must be integer Unix seconds or an ISO 8601 date-time")

    unknown = frame.join(items.select("item"), on="item", how="anti")
    if unknown.height:
        first = unknown.sort("_line").row(0, named=True)
        raise DataError(f"item {first['item']!r} is not in {items_path.name} "
                        f"({unknown.height} such interaction(s))", file=str(path),
                        line=first["_line"], column="item")
    rec_with_query = frame.filter((pl.col("behaviour") == "rec") & pl.col("query").is_not_null())
    if rec_with_query.height:
        report.notes.append(f"{rec_with_query.height} rec row(s) carry a query: it is ignored "
                            "(only src rows have queries)")
    key = ["user", "item", "behaviour", "query", "seconds",
           *(["event"] if "event" in frame.columns else [])]
    n = frame.height
    frame = frame.with_columns(
        pl.when(pl.col("behaviour") == "src").then(pl.col("query")).alias("query")
    ).unique(subset=key, keep="first", maintain_order=True)
    repeated = n - frame.height
    report.drop("row repeating an earlier row exactly (same user, item, behaviour, query and "
                "time; kept the first)", repeated)
    if repeated and 2 * repeated >= n:
        report.notes.append(f"{repeated:,} of the {n:,} rows of {path.name} repeat an earlier "
                            "row exactly: was the log exported twice?")
    frame = _group_events(frame, path, report)
    return frame.select(
        "user", "item", "behaviour",
        pl.when(pl.col("behaviour") == "src").then(pl.col("query")).alias("query"),
        pl.col("seconds").alias("timestamp"),
        pl.col("event_line").cast(pl.Int64).alias("event"),
    )


def _group_events(frame: pl.DataFrame, path: Path, report: Report) -> pl.DataFrame:
    """``event_line``: the first line of each row's event (rows of one event share it).

    With an ``event`` column, rows of one user with the same event id; without, rows of one
    user with the same item and timestamp (rec/src twins). An event's rows must share one
    timestamp."""
    if "event" in frame.columns:
        _require(frame, path, "event")
        keys = ["user", "event"]
        mixed = frame.group_by(keys).agg(pl.col("seconds").n_unique().alias("n"),
                                         pl.col("_line").max().alias("line"))
        mixed = mixed.filter(pl.col("n") > 1).sort("line")
        if mixed.height:
            row = mixed.row(0, named=True)
            raise DataError(f"the rows of event {row['event']!r} of user {row['user']!r} have "
                            "different timestamps (one event has one time)", file=str(path),
                            line=int(row["line"]), column="timestamp")
    else:
        keys = ["user", "item", "seconds"]
    frame = frame.with_columns(pl.col("_line").min().over(keys).alias("event_line"))
    grouped = frame.height - frame.select(pl.col("event_line").n_unique()).item()
    if grouped:
        how = "the same event id" if "event" in frame.columns else \
            "the same user, item and timestamp"
        report.notes.append(f"{grouped} row(s) joined another row of {how} as one event "
                            "(one seq: neither is in the other's history)")
    return frame


def read_csv_logs(
    raw: str | Path,
    *,
    interactions: str = "interactions.csv",
    items: str = "items.csv",
    min_user: int = 1,
    min_item: int = 1,
    sep: str = ",",
    seed: int = 0,
) -> tuple[RawLog, Report]:
    """Read ``raw/interactions.csv`` and ``raw/items.csv`` (see the module docstring).

    ``interactions`` / ``items`` rename the files; ``min_user`` / ``min_item`` are k-core
    thresholds (interactions per user / per item, both behaviours counted); ``sep`` is the
    field separator of both files (``tab``, ``;`` …; default ``,``). ``seed`` is
    accepted for symmetry with the other adapters (nothing here is random).
    """
    del seed
    raw = Path(raw)
    if not raw.is_dir():
        raise DataError(f"expected a folder with {interactions} and {items}", file=str(raw))
    min_user = positive_count("min_user", min_user)
    min_item = positive_count("min_item", min_item)
    sep = parse_sep(sep)
    inter_path, items_path = raw / str(interactions), raw / str(items)
    report = Report(source="csv")
    report.settings.update({"interactions": inter_path.name, "items": items_path.name,
                            "min_user": min_user, "min_item": min_item})
    if sep != ",":
        report.settings["sep"] = SEP_NAMES.get(sep, sep)
    item_table = _read_items(items_path, report, sep)
    inter = _read_interactions(inter_path, item_table, items_path, report, sep)
    inter = kcore_filter(inter, min_user, min_item, report)
    if inter.height == 0:
        raise DataError(f"no interactions left after the {min_user}/{min_item}-core filter",
                        file=str(inter_path))
    return RawLog(interactions=inter, items=item_table, name=raw.resolve().name,
                  source_file=str(inter_path), items_file=str(items_path)), report
