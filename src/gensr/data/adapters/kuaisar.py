"""``kuaisar``: the raw KuaiSAR CSVs (Sun et al. 2023) -> canonical log, streamed with polars.

Files (in ``--raw``; names can be changed with options):

* ``rec_inter.csv``: user_id, item_id, playing_time, duration_ms, time, timestamp (Unix ms,
  written as a float), click, forward, like, follow, search, search_item_related. A row with
  ``click == 1`` is a rec interaction.
* ``src_inter.csv``: user_id, search_session_id, search_session_time,
  search_session_timestamp (Unix ms), keyword (anonymised word ids, ``"[20, 34, 3]"``),
  search_source, item_id, click_cnt, item_type. A shown item with ``click_cnt > 0`` is a src
  interaction whose query is the keyword rendered as words: ``"w20 w34 w3"``. The search
  engine also returns results the recommender never shows (live streams, user profiles, …);
  clicks on them are dropped (counted per item_type) unless their type is in
  ``src_item_types`` (default VIDEO and IMAGE_ATLAS, the types the recommender serves).
* ``item_features.csv``: item_id, caption (word ids like keyword), author_id, item_type,
  upload_time, upload_type, first..fourth_level_category_{id,name,name_en}. Item text = the
  caption rendered as words + ". " + the English category names; the category column is those
  names joined by " > " (a level named "empty" or "0" is no level).

Only the columns used are read. Every file is scanned lazily and collected with the streaming
engine; the only table materialised is the positive interactions (projected to user, item,
millisecond time and keyword), which are then filtered as in the paper (after UniSAR): users
must have both behaviours, users and items at least ``min_user`` / ``min_item`` interactions,
all three constraints iterated together until nothing changes.

Time: ``timestamp`` is stored in **seconds on Beijing time** (``ms // 1000 + 8 * 3600``), so
that the day split (``timestamp // 86400``: last day test, the day before valid) cuts at
Beijing midnight as the paper's calendar days do; the millisecond Unix time goes to ``event``
and keeps the order inside a second. The clicks of one search session share their time and
therefore form one event (one query, several clicked items).

Bad input raises a :class:`~gensr.errors.DataError` naming the file, line (the header is line
1; rows are assumed not to contain line breaks) and column. An interaction whose item is not
in ``item_features.csv`` is an error unless ``unknown_items="drop"``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from gensr.data.adapters.common import positive_count
from gensr.data.canonical import RawLog, Report
from gensr.data.schema import CATEGORY_SEP
from gensr.errors import DataError
from gensr.files import check_csv_end

BEIJING_OFFSET_S = 8 * 3600
LEVELS = ("first", "second", "third", "fourth")
CATEGORY_COLUMNS = [f"{level}_level_category_name_en" for level in LEVELS]
NO_CATEGORY = ("", "empty", "0")
DEFAULT_SRC_ITEM_TYPES = ("VIDEO", "IMAGE_ATLAS")
_WORD_LIST = r"^\[[\d\s,]*\]$"


MAX_MS = 1e14  # Unix ms from here on are after the year 5000 (µs or ns given as ms; past 2**63
# they would overflow): refused as not milliseconds


@dataclass(frozen=True)
class Field:
    """A CSV column, how it is parsed and what makes a value bad.

    ``kind``: ``int`` (an id), ``ms`` (a Unix time in ms, int or float), ``flag`` (0 or 1),
    ``count`` (a non-negative integer), ``words`` (a word-id list like ``[20, 34, 3]``, may be
    empty) or ``text`` (anything). Every field can be read *typed* (polars parses it while
    scanning: fast) or from the raw *string* (tolerant, used to find and name a bad value).
    """

    name: str
    kind: str

    @property
    def dtype(self) -> type[pl.DataType]:
        return {"int": pl.Int64, "ms": pl.Float64, "flag": pl.Float64,
                "count": pl.Float64}.get(self.kind, pl.Utf8)

    def value(self, typed: bool) -> pl.Expr:
        raw = pl.col(self.name)
        if typed or self.dtype == pl.Utf8:
            return raw.str.strip_chars() if self.dtype == pl.Utf8 else raw
        return raw.str.strip_chars().cast(self.dtype, strict=False)

    def bad(self, typed: bool) -> pl.Expr | None:
        v = self.value(typed)
        if self.kind == "int":
            return v.is_null()
        if self.kind == "ms":
            return v.is_null() | v.is_nan() | (v < 0) | (v >= MAX_MS)
        if self.kind == "flag":
            return ~v.is_in([0.0, 1.0]).fill_null(False)
        if self.kind == "count":
            return v.is_null() | (v < 0) | (v != v.floor())
        if self.kind == "words":
            return v.is_not_null() & ~v.str.contains(_WORD_LIST)
        return None

    @property
    def problem(self) -> str:
        return {
            "int": f"{self.name} must be an integer",
            "ms": f"{self.name} must be a Unix time in milliseconds",
            "flag": f"{self.name} must be 0 or 1",
            "count": f"{self.name} must be a non-negative integer",
            "words": f"{self.name} must be a list of word ids like [20, 34, 3]",
        }.get(self.kind, f"bad {self.name}")


Values = Callable[[str], pl.Expr]  # column name -> its parsed value expression
REC_FIELDS = [Field("user_id", "int"), Field("item_id", "int"), Field("timestamp", "ms"),
              Field("click", "flag")]
SRC_FIELDS = [Field("user_id", "int"), Field("search_session_timestamp", "ms"),
              Field("keyword", "words"), Field("item_id", "int"), Field("click_cnt", "count"),
              Field("item_type", "text")]


def render_words(column: str) -> pl.Expr:
    """``"[20, 34, 3]"`` -> ``"w20 w34 w3"`` (null or ``[]`` -> ``""``)."""
    return (
        pl.col(column).str.extract_all(r"\d+")
        .list.eval(pl.lit("w") + pl.element())
        .list.join(" ")
        .fill_null("")
    )


def _collect(frame: pl.LazyFrame, path: Path) -> pl.DataFrame:
    try:
        return frame.collect(engine="streaming")
    except pl.exceptions.PolarsError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"cannot read the CSV: {first}", file=str(path)) from None


def _scan(path: Path, fields: Sequence[Field], typed: bool) -> pl.LazyFrame:
    """A lazy scan of ``fields`` plus ``_line`` (the file line; the header is line 1)."""
    if not path.is_file():
        raise DataError("file is missing", file=str(path))
    try:
        header = pl.scan_csv(path, infer_schema=False).collect_schema().names()
    except pl.exceptions.PolarsError as err:
        raise DataError(f"not a CSV file with a header line ({type(err).__name__})",
                        file=str(path)) from None
    missing = [f.name for f in fields if f.name not in header]
    if missing:
        raise DataError(f"missing column(s) {', '.join(missing)}", file=str(path), line=1,
                        column=missing[0])
    check_csv_end(path)
    overrides = {f.name: f.dtype for f in fields} if typed else None
    return pl.scan_csv(path, infer_schema=False, schema_overrides=overrides,
                       row_index_name="_line", row_index_offset=2,
                       ).select("_line", *[f.name for f in fields])


def _n_rows(path: Path) -> int:
    return int(_collect(pl.scan_csv(path, infer_schema=False).select(pl.len()), path).item())


def _raise_first_bad(path: Path, line: int, fields: Sequence[Field]) -> None:
    """Re-read the row at ``line`` as strings and raise the error of its first bad value."""
    row = pl.read_csv(path, infer_schema=False, skip_rows_after_header=line - 2, n_rows=1,
                      columns=[f.name for f in fields])
    for field in fields:
        bad = field.bad(typed=False)
        if bad is not None and row.select(bad).item():
            value = row[field.name][0]
            found = "an empty value" if value is None else repr(value)
            raise DataError(f"{field.problem}, found {found}", file=str(path), line=line,
                            column=field.name)
    raise DataError("invalid row", file=str(path), line=line)  # pragma: no cover


def _read_checked(
    path: Path, fields: Sequence[Field], keep: Callable[[Values], pl.Expr],
    parsed: Callable[[Values], dict[str, pl.Expr]],
) -> pl.DataFrame:
    """Stream ``path`` checking every row; the rows where ``keep`` holds come back as the
    ``parsed`` columns plus ``_line``. The first bad row raises its :class:`DataError`.

    The fast pass lets polars parse the typed columns; when it cannot (a value of the wrong
    type somewhere), a tolerant pass over the raw strings finds the row and names the value.
    """
    by_name = {f.name: f for f in fields}
    for typed in (True, False):

        def values(name: str, typed: bool = typed) -> pl.Expr:
            return by_name[name].value(typed)

        checks = [b for f in fields if (b := f.bad(typed)) is not None]
        bad = pl.any_horizontal(checks) if checks else pl.lit(False)
        query = (
            _scan(path, fields, typed).with_columns(bad.alias("_bad"))
            .filter(pl.col("_bad") | keep(values).fill_null(False))
            .select("_line", "_bad",
                    *[expr.alias(name) for name, expr in parsed(values).items()])
        )
        if typed:
            try:
                frame = query.collect(engine="streaming")
            except pl.exceptions.PolarsError:
                continue  # a value polars cannot parse: find it in the string pass
        else:
            frame = _collect(query, path)
        if frame["_bad"].any():
            _raise_first_bad(path, int(frame.filter(pl.col("_bad"))["_line"].min()), fields)
        return frame.drop("_bad")
    raise AssertionError("unreachable")  # pragma: no cover


def _item_ids(path: Path, report: Report) -> pl.DataFrame:
    """All item ids of the items file (checked: integers, unique, valid captions)."""
    ids = _read_checked(path, [Field("item_id", "int"), Field("caption", "words")],
                        keep=lambda v: pl.lit(True), parsed=lambda v: {"item": v("item_id")})
    report.read(path, ids.height)
    dup = ids.filter(pl.col("item").is_duplicated())
    if dup.height:
        item = dup["item"][0]
        lines = dup.filter(pl.col("item") == item)["_line"].sort()
        raise DataError(f"duplicate item id {item} (also on line {lines[0]})", file=str(path),
                        line=int(lines[1]), column="item_id")
    return ids.select("item")


def _drop_unknown_items(
    inter: pl.DataFrame, known: pl.DataFrame, path: Path, items_path: Path, policy: str,
    report: Report, behaviour: str,
) -> pl.DataFrame:
    unknown = inter.join(known, on="item", how="anti")
    if unknown.height == 0:
        return inter
    if policy == "error":
        first = unknown.sort("_line").row(0, named=True)
        raise DataError(
            f"item {first['item']} is not in {items_path.name} ({unknown.height:,} such "
            f"{behaviour} interaction(s); --option unknown_items=drop drops them)",
            file=str(path), line=first["_line"], column="item_id",
        )
    report.drop(f"{behaviour} interaction with an item not in {items_path.name}", unknown.height)
    return inter.join(known, on="item", how="semi")


def filter_fixed_point(
    inter: pl.DataFrame, min_user: int, min_item: int, report: Report
) -> pl.DataFrame:
    """Keep users with both behaviours and >= ``min_user`` interactions and items with
    >= ``min_item``, re-applying all three until nothing changes (each drop can push another
    user or item under a threshold). ``inter`` has columns user, item, behaviour.

    Counting is done with ``numpy.bincount`` over dense ids and a mask of the kept rows, so a
    round costs a few passes over integer arrays, however many rounds are needed."""
    codes = inter.select(
        (pl.col("user").rank("dense") - 1).cast(pl.Int64).alias("u"),
        (pl.col("item").rank("dense") - 1).cast(pl.Int64).alias("i"),
        (pl.col("behaviour") == "src").alias("s"),
    )
    user, item, is_src = (codes[c].to_numpy() for c in ("u", "i", "s"))
    n_users = int(user.max()) + 1 if len(user) else 0
    n_items = int(item.max()) + 1 if len(item) else 0
    alive = np.ones(len(user), dtype=bool)

    def drop(bad_rows: np.ndarray, reason: str) -> int:
        bad_rows &= alive
        n = int(bad_rows.sum())
        alive[bad_rows] = False
        report.drop(reason, n)
        return n

    while True:
        dropped = 0
        per_user = np.bincount(user[alive], minlength=n_users)
        src_per_user = np.bincount(user[alive & is_src], minlength=n_users)
        both = (src_per_user > 0) & (src_per_user < per_user)
        dropped += drop(~both[user], "user without both rec and src interactions")
        per_user = np.bincount(user[alive], minlength=n_users)
        dropped += drop(per_user[user] < min_user, f"user with < {min_user} interactions")
        per_item = np.bincount(item[alive], minlength=n_items)
        dropped += drop(per_item[item] < min_item, f"item with < {min_item} interactions")
        if dropped == 0:
            return inter.filter(pl.Series(alive))


def read_kuaisar(
    raw: str | Path,
    *,
    min_user: int = 5,
    min_item: int = 5,
    seed: int = 0,
    rec_file: str = "rec_inter.csv",
    src_file: str = "src_inter.csv",
    items_file: str = "item_features.csv",
    src_item_types: Sequence[str] = DEFAULT_SRC_ITEM_TYPES,
    unknown_items: str = "error",
) -> tuple[RawLog, Report]:
    """Read a folder of raw KuaiSAR CSVs (see the module docstring for what is kept).

    ``min_user`` / ``min_item``: interaction thresholds of the fixed-point filter;
    ``src_item_types``: result types whose clicks count as src interactions;
    ``unknown_items``: ``"error"`` (default) or ``"drop"`` for interactions whose item is not
    in the items file. ``seed`` is accepted for symmetry with the other adapters (unused: the
    queries come from the log).
    """
    del seed
    raw = Path(raw)
    if not raw.is_dir():
        raise DataError("expected a folder with rec_inter.csv, src_inter.csv and "
                        "item_features.csv", file=str(raw))
    min_user = positive_count("min_user", min_user)
    min_item = positive_count("min_item", min_item)
    if unknown_items not in ("error", "drop"):
        raise DataError(f"option unknown_items must be 'error' or 'drop', got {unknown_items!r}")
    if isinstance(src_item_types, str):
        src_item_types = [src_item_types]
    if not src_item_types or not all(isinstance(t, str) for t in src_item_types):
        raise DataError(f"option src_item_types must be a list of item types, got "
                        f"{src_item_types!r}")
    rec_path, src_path, items_path = raw / rec_file, raw / src_file, raw / items_file
    for path in (rec_path, src_path, items_path):
        if not path.is_file():
            raise DataError("file is missing", file=str(path))
    report = Report(source="kuaisar")
    report.settings.update({
        "min_user": min_user, "min_item": min_item, "src_item_types": list(src_item_types),
        "unknown_items": unknown_items, "timestamp": "seconds, Beijing time (UTC+8)",
    })

    known = _item_ids(items_path, report)

    rec = _read_checked(
        rec_path, REC_FIELDS,
        keep=lambda v: v("click") == 1,
        parsed=lambda v: {"user": v("user_id"), "item": v("item_id"),
                          "ms": v("timestamp").round(0).cast(pl.Int64, strict=False)},
    )
    n_rec = _n_rows(rec_path)
    report.read(rec_path, n_rec)
    report.drop("rec row not clicked (click = 0)", n_rec - rec.height)

    src = _read_checked(
        src_path, SRC_FIELDS,
        keep=lambda v: v("click_cnt") > 0,
        parsed=lambda v: {"user": v("user_id"), "item": v("item_id"),
                          "ms": v("search_session_timestamp").round(0).cast(pl.Int64, strict=False),
                          "keyword": v("keyword"), "item_type": v("item_type").fill_null("")},
    )
    n_src = _n_rows(src_path)
    report.read(src_path, n_src)
    report.drop("src row not clicked (click_cnt = 0)", n_src - src.height)
    other_types = src.filter(~pl.col("item_type").is_in(list(src_item_types)))
    for item_type, n in (other_types.group_by("item_type").len().sort("item_type")
                         .iter_rows()):
        report.drop(f"src click on a result of item_type {item_type or '(empty)'}", n)
    src = src.filter(pl.col("item_type").is_in(list(src_item_types))).drop("item_type")

    rec = _drop_unknown_items(rec, known, rec_path, items_path, unknown_items, report, "rec")
    src = _drop_unknown_items(src, known, src_path, items_path, unknown_items, report, "src")
    inter = pl.concat([
        rec.select("user", "item", "ms", pl.lit(None, dtype=pl.Utf8).alias("keyword"),
                   pl.lit("rec").alias("behaviour")),
        src.select("user", "item", "ms", "keyword", pl.lit("src").alias("behaviour")),
    ])
    del rec, src
    inter = filter_fixed_point(inter, min_user, min_item, report)
    if inter.height == 0:
        raise DataError("no interactions left after filtering (both behaviours, "
                        f"{min_user}/{min_item} interactions)", file=str(raw))

    interactions = inter.select(
        pl.col("user").cast(pl.Utf8),
        pl.col("item").cast(pl.Utf8),
        pl.col("behaviour"),
        pl.when(pl.col("behaviour") == "src").then(render_words("keyword")).alias("query"),
        (pl.col("ms") // 1000 + BEIJING_OFFSET_S).alias("timestamp"),
        pl.col("ms").alias("event"),
    )
    items = _item_table(items_path, inter["item"].unique())
    report.notes.append(
        "timestamp = Unix seconds shifted to Beijing time (UTC+8), so the day split cuts at "
        "Beijing midnight; event = the Unix time in ms (order inside a second)"
    )
    report.notes.append("queries and captions are anonymised word ids rendered as w<id>")
    return RawLog(interactions=interactions, items=items, name="KuaiSAR",
                  source_file=f"{rec_path} + {src_path.name}",
                  items_file=str(items_path)), report


def _item_table(path: Path, used: pl.Series) -> pl.DataFrame:
    """Text and category of the ``used`` item ids (streamed; only their rows are kept)."""
    fields = [Field("item_id", "int"), Field("caption", "words"),
              *[Field(c, "text") for c in CATEGORY_COLUMNS]]
    frame = _read_checked(
        path, fields,
        keep=lambda v: v("item_id").is_in(used.implode()),
        parsed=lambda v: {
            "item": v("item_id").cast(pl.Utf8),
            "caption": render_words("caption"),
            "levels": pl.concat_list([
                pl.when(v(c).is_null() | v(c).is_in(NO_CATEGORY)).then(None).otherwise(v(c))
                for c in CATEGORY_COLUMNS
            ]).list.drop_nulls(),
        },
    )
    words = pl.col("levels").list.join(" ")
    return frame.select(
        "item",
        pl.concat_str(
            [pl.when(pl.col("caption") != "").then("caption"),
             pl.when(words != "").then(words)],
            separator=". ", ignore_nulls=True,
        ).fill_null("").alias("text"),
        pl.col("levels").list.join(CATEGORY_SEP).alias("category"),
    )
