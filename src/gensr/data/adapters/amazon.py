"""``amazon``: raw Amazon review + metadata JSON lines (2014 and 2018 layouts) -> canonical log.

``--raw`` is a folder holding one reviews file and one metadata file (``.json`` or
``.json.gz``, one record per line), found by name or given with the ``reviews`` / ``meta``
options:

* **2014** (McAuley et al.): ``reviews_<Category>_5.json.gz`` (strict JSON: ``reviewerID``,
  ``asin``, ``overall``, ``reviewText``, ``summary``, ``unixReviewTime`` …) and
  ``meta_<Category>.json.gz``, whose lines are *Python dict literals* (single quotes) and whose
  ``categories`` is a list of category paths (an item can have several).
* **2018** (Ni et al.): ``<Category>_5.json.gz`` (same review fields) and
  ``meta_<Category>.json.gz`` in strict JSON, where ``category`` is one path (a list of levels).

Each line is parsed as JSON first and as a Python literal second. What becomes of it:

* **Items**: text = cleaned title + ". " + category words + ". " + brand (the UniSRec recipe).
  Titles lose HTML tags and entities; a title that was only markup (the 2018 Magazine titles are
  ``<span class="a-size-medium …``) falls back to the first sentence of the description, else to
  the brand. Category words are the distinct level names of all the item's paths; the
  ``category`` column is the first path joined by " > ".
* **Queries** (Ai et al. 2017): each category path becomes a query with
  :func:`~gensr.data.text.category_query`, keeping only words of the *review vocabulary*
  (stemmed words of every review's ``reviewText`` + ``summary`` in the reviews file).
* **Purchases** = reviews. A repeated (user, item) keeps its earliest review; reviews of items
  without metadata are dropped; then users and items are k-core filtered (``min_user``,
  ``min_item``, iterated). timestamp = ``unixReviewTime``, event = the review's line number
  (the tie-break for reviews on the same day). Every purchase yields a rec interaction and a src
  twin with one of the item's queries
  (:func:`~gensr.data.adapters.common.purchases_to_interactions`).

Metadata lines that repeat an item with an *identical* record (frequent in the 2018 files) are
skipped and counted; a repeated item with *different* metadata is an error.
"""

from __future__ import annotations

import ast
import gzip
import html
import json
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from gensr.data.adapters.common import positive_count, purchases_to_interactions
from gensr.data.canonical import RawLog, Report, kcore_filter
from gensr.data.schema import CATEGORY_SEP
from gensr.data.text import analyze, category_query, stemmer_name
from gensr.errors import DAMAGED, DataError

JSON_SUFFIXES = (".json", ".json.gz")
_TAG = re.compile(r"<[/!]?[A-Za-z][^>]*(?:>|$)")
_SPACES = re.compile(r"\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")
# The asin of a line without parsing it (both quote styles); lines of items no review names
# are skipped on this cheap test (when it finds exactly one asin), which keeps the large 2014
# metadata files fast to read.
_ASIN = re.compile(r"""["']asin["']\s*:\s*["']([^"']+)["']""")


def _is_json_file(path: Path) -> bool:
    return path.is_file() and path.name.endswith(JSON_SUFFIXES)


def _find_file(raw: Path, given: str | None, *, meta: bool) -> Path:
    """The reviews (``meta=False``) or metadata file of the folder ``raw``."""
    what, option = ("metadata", "meta") if meta else ("reviews", "reviews")
    if given:
        path = raw / str(given)
        if not path.is_file():
            raise DataError(f"{what} file is missing (--option {option}=…)", file=str(path))
        return path
    found = sorted(
        p for p in raw.iterdir() if _is_json_file(p) and p.name.startswith("meta_") == meta
    )
    if not found:
        pattern = "meta_*.json[.gz]" if meta else "*.json[.gz] (other than meta_*)"
        raise DataError(f"no {what} file {pattern} found; name it with --option {option}=FILE",
                        file=str(raw))
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise DataError(f"several {what} files ({names}); choose one with --option "
                        f"{option}=FILE", file=str(raw))
    return found[0]


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a ``.json`` or ``.json.gz`` file; unreadable files are errors."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            yield from enumerate(fh, start=1)
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as err:
        what = "corrupt gzip data" if isinstance(err, zlib.error) else str(err)
        end = f": {DAMAGED}" if isinstance(err, (zlib.error, EOFError, UnicodeDecodeError)) \
            else ""
        raise DataError(f"cannot read the file: {what} ({err}){end}" if isinstance(
            err, zlib.error) else f"cannot read the file: {what}{end}", file=str(path)
        ) from None


def _parse_record(text: str, file: Path, line: int) -> dict[str, Any]:
    """One JSON object, or a Python dict literal (the 2014 metadata lines)."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as json_err:
        try:
            record = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise DataError(
                f"not valid JSON ({json_err.msg} at column {json_err.colno}) nor a Python "
                "dict literal", file=str(file), line=line,
            ) from None
    if not isinstance(record, dict):
        raise DataError(f"expected an object, got {type(record).__name__}", file=str(file),
                        line=line)
    return record


def clean_text(text: object) -> str:
    """Strip HTML tags and entities and collapse whitespace ("" for non-strings)."""
    if not isinstance(text, str):
        return ""
    text = html.unescape(_TAG.sub(" ", text))
    return _SPACES.sub(" ", _TAG.sub(" ", text)).strip()


def _first_sentence(description: object) -> str:
    parts = description if isinstance(description, list) else [description]
    for part in parts:
        cleaned = clean_text(part)
        if cleaned:
            return _SENTENCE_END.split(cleaned, maxsplit=1)[0].strip()
    return ""


def _category_paths(record: dict[str, Any], file: Path, line: int) -> list[list[str]]:
    """The item's category paths: 2014 ``categories`` (list of paths) or 2018 ``category``."""
    if "categories" in record:
        column, value = "categories", record["categories"]
        paths = value if isinstance(value, list) else None
    else:
        column, value = "category", record.get("category", [])
        paths = [value] if isinstance(value, list) else None
    if paths is None or not all(
        isinstance(p, list) and all(isinstance(level, str) for level in p) for p in paths
    ):
        shape = "a list of category paths" if column == "categories" else "a list of levels"
        raise DataError(f"expected {shape}, got {value!r:.80}", file=str(file), line=line,
                        column=column)
    cleaned = [[clean_text(level) for level in path] for path in paths]
    return [[level for level in path if level] for path in cleaned if any(path)]


def _item_text(title: str, paths: list[list[str]], brand: str) -> str:
    levels = list(dict.fromkeys(level for path in paths for level in path))
    return ". ".join(part for part in (title.rstrip(" ."), " ".join(levels), brand) if part)


def _read_reviews(path: Path, report: Report) -> tuple[pl.DataFrame, set[str]]:
    """Reviews -> purchases (user, item, timestamp, event) and the stemmed review vocabulary."""
    users: list[str] = []
    items: list[str] = []
    times: list[int] = []
    events: list[int] = []
    vocabulary: set[str] = set()
    n_lines = 0
    for line, text in _lines(path):
        if not text.strip():
            continue
        n_lines += 1
        record = _parse_record(text, path, line)
        for column in ("reviewerID", "asin"):
            value = record.get(column)
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"missing or empty {column}", file=str(path), line=line,
                                column=column)
        stamp = record.get("unixReviewTime")
        if isinstance(stamp, str) and stamp.strip().lstrip("-").isdigit():
            stamp = int(stamp)
        if isinstance(stamp, bool) or not isinstance(stamp, int):
            raise DataError(f"unixReviewTime must be an integer, got {stamp!r}",
                            file=str(path), line=line, column="unixReviewTime")
        if abs(stamp) >= 10**11:  # after the year 5000 in seconds; beyond 2**63 fails later
            raise DataError(f"unixReviewTime must be Unix seconds, got {stamp} (after the year "
                            "5000: milliseconds?)", file=str(path), line=line,
                            column="unixReviewTime")
        users.append(record["reviewerID"])
        items.append(record["asin"])
        times.append(stamp)
        events.append(line)
        words = " ".join(
            v for v in (record.get("reviewText"), record.get("summary")) if isinstance(v, str)
        )
        vocabulary.update(analyze(words))
    report.read(path, n_lines)
    if n_lines == 0:
        raise DataError("no reviews in the file", file=str(path))
    frame = pl.DataFrame(
        {"user": users, "item": items, "timestamp": times, "event": events},
        schema={"user": pl.Utf8, "item": pl.Utf8, "timestamp": pl.Int64, "event": pl.Int64},
    )
    return frame, vocabulary


def _read_meta(path: Path, needed: set[str], report: Report) -> dict[str, dict[str, Any]]:
    """Metadata of the ``needed`` items: asin -> {title, title_from, brand, paths}."""
    items: dict[str, dict[str, Any]] = {}
    first_line: dict[str, int] = {}
    records: dict[str, dict[str, Any]] = {}
    layouts: set[str] = set()
    n_lines = n_identical = n_unused = 0
    for line, text in _lines(path):
        if not text.strip():
            continue
        n_lines += 1
        quick = _ASIN.findall(text)
        if len(quick) == 1 and quick[0] not in needed:
            n_unused += 1
            continue
        record = _parse_record(text, path, line)
        asin = record.get("asin")
        if not isinstance(asin, str) or not asin.strip():
            raise DataError("missing or empty asin", file=str(path), line=line, column="asin")
        if asin not in needed:
            n_unused += 1
            continue
        if asin in records:
            if records[asin] == record:
                n_identical += 1
                continue
            raise DataError(
                f"duplicate item id {asin!r} with different metadata (first on line "
                f"{first_line[asin]})", file=str(path), line=line, column="asin",
            )
        records[asin] = record
        first_line[asin] = line
        layouts.add("2014" if "categories" in record else "2018")
        paths = _category_paths(record, path, line)
        brand = clean_text(record.get("brand"))
        title, title_from = clean_text(record.get("title")), "title"
        if not title:
            title = _first_sentence(record.get("description"))
            title_from = "description" if title else ("brand" if brand else "none")
            title = title or brand
        items[asin] = {"title": title, "title_from": title_from, "brand": brand,
                       "paths": paths}
    report.read(path, n_lines)
    report.drop("metadata line of an item no review names", n_unused)
    report.drop("metadata line repeating an item with an identical record", n_identical)
    report.settings["layout"] = "+".join(sorted(layouts)) or "unknown"
    return items


def read_amazon(
    raw: str | Path,
    *,
    seed: int = 0,
    min_user: int = 5,
    min_item: int = 5,
    reviews: str | None = None,
    meta: str | None = None,
) -> tuple[RawLog, Report]:
    """Read a folder of raw Amazon reviews + metadata (2014 or 2018 layout).

    ``reviews`` / ``meta`` name the files inside ``raw`` when the folder holds several;
    ``min_user`` / ``min_item`` are the k-core thresholds (purchases per user / per item);
    ``seed`` picks each purchase's query among its item's category queries.
    """
    raw = Path(raw)
    if not raw.is_dir():
        raise DataError("expected a folder with a reviews file and a meta_* file",
                        file=str(raw))
    min_user = positive_count("min_user", min_user)
    min_item = positive_count("min_item", min_item)
    reviews_path = _find_file(raw, reviews, meta=False)
    meta_path = _find_file(raw, meta, meta=True)
    report = Report(source="amazon")
    report.settings.update({
        "reviews": reviews_path.name, "meta": meta_path.name, "min_user": min_user,
        "min_item": min_item, "stemmer": stemmer_name(),
    })

    purchases, vocabulary = _read_reviews(reviews_path, report)
    report.settings["review_vocabulary"] = len(vocabulary)
    n = purchases.height
    purchases = purchases.sort("timestamp", "event").unique(
        subset=["user", "item"], keep="first", maintain_order=True
    )
    report.drop("repeated review of the same item by the same user (kept the earliest)",
                n - purchases.height)

    metadata = _read_meta(meta_path, set(purchases["item"].unique()), report)
    without = purchases.filter(~pl.col("item").is_in(list(metadata)))
    purchases = purchases.filter(pl.col("item").is_in(list(metadata)))
    report.drop("review of an item without metadata", without.height)
    if without.height:
        report.notes.append(f"{without['item'].n_unique():,} reviewed item(s) have no line in "
                            f"{meta_path.name}; their {without.height:,} reviews were dropped")
    purchases = kcore_filter(purchases, min_user, min_item, report, reason_prefix="k-core: ")
    if purchases.height == 0:
        raise DataError(f"no purchases left after the {min_user}/{min_item}-core filter",
                        file=str(reviews_path))

    kept = purchases["item"].unique(maintain_order=True).to_list()
    items = pl.DataFrame(
        {
            "item": kept,
            "text": [_item_text(metadata[a]["title"], metadata[a]["paths"],
                                metadata[a]["brand"]) for a in kept],
            "category": [CATEGORY_SEP.join(metadata[a]["paths"][0])
                         if metadata[a]["paths"] else "" for a in kept],
        },
        schema={"item": pl.Utf8, "text": pl.Utf8, "category": pl.Utf8},
    )
    query_rows = [
        (asin, category_query(path, vocabulary=vocabulary))
        for asin in kept for path in metadata[asin]["paths"]
    ]
    item_queries = pl.DataFrame(query_rows, schema={"item": pl.Utf8, "query": pl.Utf8},
                                orient="row")
    inter = purchases_to_interactions(purchases, item_queries, report, seed=seed)

    sources = Counter(metadata[a]["title_from"] for a in kept)
    replaced = {"the description's first sentence": sources["description"],
                "the brand": sources["brand"],
                "nothing (no description or brand)": sources["none"]}
    if any(replaced.values()):
        report.notes.append(
            "item titles that were empty or only HTML markup were replaced by "
            + ", ".join(f"{what} ({n:,})" for what, n in replaced.items() if n)
        )
    report.notes.append(
        "queries: each category path -> Ai et al. (2017) query over the review vocabulary "
        f"({len(vocabulary):,} stemmed words, {stemmer_name()} stemmer); one query per "
        "purchase is used for its src twin"
    )
    name = re.sub(r"^reviews_|_5$", "", re.sub(r"\.json(\.gz)?$", "", reviews_path.name))
    return RawLog(interactions=inter, items=items, name=name or "amazon",
                  source_file=str(reviews_path), items_file=str(meta_path)), report
