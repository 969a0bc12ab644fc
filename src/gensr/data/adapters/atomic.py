"""``amazon-atomic``: RecBole/UniSRec atomic files (e.g. ``Scientific.*``) -> canonical log.

Files (``PREFIX`` is found from ``*.text``): ``PREFIX.text`` (``item_id:token`` = ASIN,
``text:token_seq`` = "title. category words. brand."), ``PREFIX.{train,valid,test}.inter``
(``user_id:token``, ``item_id_list:token_seq`` = the history, ``item_id:token`` = the next
item; ids index ``PREFIX.item2index``/``PREFIX.user2index``). Each user's sequence is rebuilt
from the rows; the file's split is kept (valid/test = the last two purchases). Category words
are the sentence of the text that opens with the category root (the most common opening of
the second-to-last ``". "`` segment, e.g. "Industrial & Scientific"); each item's one
category path becomes a query the Ai et al. way; every purchase yields a rec and a src interaction.
"""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import polars as pl

from gensr.data.adapters.common import purchases_to_interactions
from gensr.data.canonical import RawLog, Report
from gensr.data.text import category_query, stemmer_name
from gensr.errors import DataError

INTER_HEADER = ["user_id:token", "item_id_list:token_seq", "item_id:token"]


def _find_prefix(raw: Path) -> str:
    if not raw.is_dir():
        raise DataError(f"{raw} is not a directory of atomic files")
    texts = sorted(raw.glob("*.text"))
    if not texts:
        raise DataError("no *.text file found", file=str(raw))
    return texts[0].name[: -len(".text")]


def _read_lines(path: Path) -> list[list[str]]:
    if not path.exists():
        raise DataError("file is missing", file=str(path))
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(f"not UTF-8 text (byte {data[err.start]:#04x} at byte {err.start})",
                        file=str(path), line=line) from None
    return [line.rstrip("\n").split("\t") for line in io.StringIO(text, newline=None)]


def _read_index(path: Path) -> list[str]:
    """``name\\tindex`` lines -> list where position = index."""
    rows = _read_lines(path)
    out: dict[int, str] = {}
    for n, row in enumerate(rows, start=1):
        if len(row) != 2:
            raise DataError(f"expected 2 tab-separated fields, got {len(row)}",
                            file=str(path), line=n)
        try:
            out[int(row[1])] = row[0]
        except ValueError:
            raise DataError(f"index {row[1]!r} is not an integer", file=str(path),
                            line=n) from None
    if sorted(out) != list(range(len(out))):
        raise DataError("indices are not 0..n-1", file=str(path))
    return [out[i] for i in range(len(out))]


def _segments(text: str) -> list[str]:
    return [p.strip() for p in text.strip().rstrip(".").split(". ")]


def category_root(texts: list[str]) -> str:
    """The most common opening of the category sentence (e.g. "Industrial & Scientific")."""
    openings = Counter(
        " ".join(parts[-2].split()[:2]) for parts in map(_segments, texts) if len(parts) >= 3
    )
    openings.pop("", None)
    return openings.most_common(1)[0][0] if openings else ""


def category_words(text: str, root: str = "") -> str:
    """The category sentence of a "title. category words. brand." text ("" when absent).

    With ``root`` (see :func:`category_root`) the last sentence that starts with it is taken,
    which survives brands and titles that contain ". " ("Mr. Heater"); without it, the
    second-to-last sentence.
    """
    parts = _segments(text)
    if root:
        found = [p for p in parts[1:] if p.startswith(root)]
        return found[-1] if found else ""
    return parts[-2] if len(parts) >= 3 else ""


def read_atomic(raw: str | Path, *, seed: int = 0) -> tuple[RawLog, Report]:
    """Read a directory of UniSRec/RecBole atomic files."""
    raw = Path(raw)
    prefix = _find_prefix(raw)
    report = Report(source="amazon-atomic")
    report.settings.update({"prefix": prefix, "stemmer": stemmer_name()})

    text_path = raw / f"{prefix}.text"
    text_rows = _read_lines(text_path)
    if not text_rows or text_rows[0][:2] != ["item_id:token", "text:token_seq"]:
        raise DataError("header must be 'item_id:token\\ttext:token_seq'", file=str(text_path),
                        line=1)
    asin_text: dict[str, str] = {}
    for n, row in enumerate(text_rows[1:], start=2):
        if len(row) < 2:
            raise DataError("expected 2 tab-separated fields", file=str(text_path), line=n)
        if row[0] in asin_text:
            raise DataError(f"duplicate item id {row[0]!r}", file=str(text_path), line=n,
                            column="item_id:token")
        asin_text[row[0]] = row[1]
    report.read(text_path, len(text_rows) - 1)
    item_names = _read_index(raw / f"{prefix}.item2index")
    report.read(raw / f"{prefix}.item2index", len(item_names))
    user_path = raw / f"{prefix}.user2index"
    user_names = _read_index(user_path) if user_path.exists() else None

    # sequences: for each user, rows (history, target) -> full ordered purchase list
    seqs: dict[int, list[int]] = {}
    split_targets: dict[str, dict[int, int]] = {}
    train_rows: dict[int, list[tuple[int, list[int], int]]] = {}
    for split in ("train", "valid", "test"):
        path = raw / f"{prefix}.{split}.inter"
        rows = _read_lines(path)
        if not rows or rows[0][:3] != INTER_HEADER:
            raise DataError(f"header must be {INTER_HEADER}", file=str(path), line=1)
        report.read(path, len(rows) - 1)
        split_targets[split] = {}
        for n, row in enumerate(rows[1:], start=2):
            if len(row) != 3:
                raise DataError(f"expected 3 tab-separated fields, got {len(row)}",
                                file=str(path), line=n)
            try:
                user = int(row[0])
                hist = [int(x) for x in row[1].split()] if row[1].strip() else []
                target = int(row[2])
            except ValueError:
                raise DataError("ids must be integers", file=str(path), line=n) from None
            for item in [*hist, target]:
                if not 0 <= item < len(item_names):
                    raise DataError(f"item index {item} is not in {prefix}.item2index",
                                    file=str(path), line=n, column="item_id")
            if split == "train":
                train_rows.setdefault(user, []).append((n, hist, target))
            else:
                split_targets[split][user] = target
                if split == "test":
                    seqs[user] = [*hist, target]
    # rebuild the training part from the train rows (histories may be truncated windows)
    purchases = []
    truncated = 0
    for user, full in seqs.items():
        if user not in split_targets["valid"]:
            raise DataError(f"user {user} has a test row but no valid row",
                            file=str(raw / f"{prefix}.valid.inter"))
        rows = sorted(train_rows.get(user, []), key=lambda r: (len(r[1]), -r[0]))
        train_seq = [*rows[0][1], *(r[2] for r in rows)] if rows else full[:-2]
        rebuilt = [*train_seq, split_targets["valid"][user], full[-1]]
        if rebuilt[-len(full):] != full:
            raise DataError(f"user {user}: train, valid and test rows do not form one sequence",
                            file=str(raw / f"{prefix}.train.inter"))
        if len(rebuilt) > len(full):
            truncated += 1
        order = [*train_seq, split_targets["valid"][user], full[-1]]
        labels = ["train"] * len(train_seq) + ["valid", "test"]
        uname = user_names[user] if user_names else str(user)
        for pos, (item, split) in enumerate(zip(order, labels)):
            purchases.append((uname, item_names[item], pos, split))
    # users without a test row cannot be rebuilt (their sequence ends unknown): say so
    no_test_valid = sum(1 for u in split_targets["valid"] if u not in seqs)
    no_test_train = sum(len(r) for u, r in train_rows.items() if u not in seqs)
    report.drop(f"valid row of a user with no row in {prefix}.test.inter", no_test_valid)
    report.drop(f"train row of a user with no row in {prefix}.test.inter", no_test_train)
    if no_test_valid or no_test_train:
        users = {u for u in split_targets["valid"] if u not in seqs} | {
            u for u in train_rows if u not in seqs}
        report.notes.append(f"{len(users):,} user(s) have rows in the train or valid file but "
                            f"none in {prefix}.test.inter: their rows were dropped")
    if not seqs:
        raise DataError("no user has a test row", file=str(raw / f"{prefix}.test.inter"))
    if truncated:
        report.notes.append(f"{truncated} users' test histories were truncated in the files; "
                            "their whole sequences were rebuilt from the train rows")
    frame = pl.DataFrame(purchases, schema={"user": pl.Utf8, "item": pl.Utf8,
                                            "timestamp": pl.Int64, "split": pl.Utf8},
                         orient="row").with_columns(pl.col("timestamp").alias("event"))
    missing = frame.join(pl.DataFrame({"item": list(asin_text)}), on="item", how="anti")
    if missing.height:
        raise DataError(f"item {missing['item'][0]!r} has no text", file=str(text_path))

    used = set(frame["item"].unique().to_list())
    items = pl.DataFrame({
        "item": [a for a in asin_text if a in used],
        "text": [asin_text[a] for a in asin_text if a in used],
    })
    root = category_root(items["text"].to_list())
    report.settings["category_root"] = root
    items = items.with_columns(
        pl.col("text").map_elements(lambda t: category_words(t, root), return_dtype=pl.Utf8)
        .alias("category")
    )
    item_queries = items.select(
        "item",
        pl.col("category").map_elements(lambda c: category_query([c]), return_dtype=pl.Utf8)
        .alias("query"),
    )
    inter = purchases_to_interactions(frame, item_queries, report, seed=seed)
    return RawLog(interactions=inter, items=items, name=prefix,
                  source_file=str(raw / f"{prefix}.*.inter"), items_file=str(text_path)), report
