"""The amazon adapter on raw review + metadata files written here in the 2014 and 2018 layouts,
and on the real Magazine Subscriptions files when ../shared/data is present."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from gensr.data import load_data
from gensr.data.adapters.amazon import clean_text, read_amazon
from gensr.data.prepare import prepare
from gensr.errors import DataError
from helpers import shared_path

N_USERS = N_ITEMS = 16
PER_USER = 8
DAY = 86_400
T0 = 1_400_000_000
TWO_PATHS = [["Toys & Games", "Building Toys", "Trains"], ["Toys & Games", "Puzzles"]]
PATHS = [["Toys & Games", "Puzzles"], ["Toys & Games", "Dolls"], ["Toys & Games", "Trains"]]
SPAN = '<span class="a-size-medium a-color-secondary"'


def _review(user: str, item: str, day: int, text: str = "My kids love these toy games.") -> dict:
    return {"reviewerID": user, "asin": item, "reviewerName": f"Name {user}", "helpful": [0, 0],
            "reviewText": text, "overall": 5.0, "summary": "Great trains, dolls and puzzles",
            "unixReviewTime": T0 + day * DAY, "reviewTime": "05 13, 2014"}


def _reviews() -> list[dict]:
    """16 users x 8 items of 16 (each item bought by 8 users), plus the rows k-core and the
    metadata check must drop."""
    rows = []
    for u in range(N_USERS):
        for j in range(PER_USER):
            rows.append(_review(f"U{u:02d}", f"T{(u + j) % N_ITEMS:02d}", u * 100 + j))
    rows.append(_review("U03", "T03", 350))  # repeat of U03's first purchase (day 300)
    rows.append(_review("U01", "T99", 150))  # T99 has one purchase: k-core drops it
    rows.append(_review("U02", "NOMETA", 250))  # no metadata line
    rows += [_review("U99", f"T{i:02d}", 900 + i) for i in range(3)]  # user with 3 purchases
    return rows


def _meta_2014(item: str) -> dict:
    paths = TWO_PATHS if item == "T00" else [PATHS[int(item[1:]) % 3]]
    return {"asin": item, "title": f"Toy {item} &amp; friends", "price": 12.5,
            "imUrl": f"http://ecx.images-amazon.com/images/I/{item}.jpg",
            "related": {"also_bought": ["T01", "T02"]}, "brand": "Brio",
            "categories": paths, "salesRank": {"Toys & Games": 1200}}


def _meta_2018(item: str) -> dict:
    paths = TWO_PATHS[0] if item == "T00" else PATHS[int(item[1:]) % 3]
    title = SPAN if item == "T01" else f"Toy {item} &amp; friends"
    return {"category": paths, "tech1": "", "description": [
        "A <b>wooden</b> puzzle for all ages. Ships in a box.", ""], "fit": "",
            "title": title, "also_buy": [], "image": [], "tech2": "", "brand": "Brio",
            "feature": [], "rank": [], "also_view": [], "details": {}, "main_cat": "Toys",
            "similar_item": "", "date": "", "price": "", "asin": item}


def _write_lines(path: Path, lines: list[str]) -> None:
    data = "".join(line + "\n" for line in lines)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(data)
    else:
        path.write_text(data, encoding="utf-8")


def _write_raw(folder: Path, layout: str = "2014") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    items = [f"T{i:02d}" for i in range(N_ITEMS)] + ["T99", "T77"]
    reviews = [json.dumps(r) for r in _reviews()]
    if layout == "2014":
        _write_lines(folder / "reviews_Toys_and_Games_5.json.gz", reviews)
        # the 2014 metadata lines are Python dict literals (single quotes), not JSON
        _write_lines(folder / "meta_Toys_and_Games.json.gz", [repr(_meta_2014(i)) for i in items])
    else:
        _write_lines(folder / "Toys_and_Games_5.json.gz", reviews)
        meta = [json.dumps(_meta_2018(i)) for i in items]
        meta.insert(5, meta[3])  # 2018 files repeat some lines verbatim
        _write_lines(folder / "meta_Toys_and_Games.json.gz", meta)
    return folder


def _prepare(raw: Path, out: Path, **options):
    return prepare("amazon", raw, out, n_negatives=5, options=options)


def _orig(data) -> dict[int, str]:
    return dict(zip(data.items["item_id"].to_list(), data.items["orig_id"].to_list()))


def test_2014_layout(tmp_path):
    out, report = _prepare(_write_raw(tmp_path / "raw"), tmp_path / "d")
    data = load_data(out)
    c = report.counts
    assert c["users"] == N_USERS and c["items"] == N_ITEMS
    assert c["interactions"] == {"rec": 128, "src": 128}
    assert report.settings["layout"] == "2014"
    assert report.files == {"reviews_Toys_and_Games_5.json.gz": 128 + 6,
                            "meta_Toys_and_Games.json.gz": 18}
    assert report.dropped["review of an item without metadata"] == 1
    assert report.dropped["repeated review of the same item by the same user (kept the "
                          "earliest)"] == 1
    assert report.dropped["k-core: user with < 5 interactions"] == 3
    assert report.dropped["k-core: item with < 5 interactions"] == 1
    assert report.dropped["metadata line of an item no review names"] == 1
    items = {r["orig_id"]: r for r in data.items.iter_rows(named=True)}
    assert items["T00"]["category"] == "Toys & Games > Building Toys > Trains"
    assert items["T00"]["text"] == ("Toy T00 & friends. Toys & Games Building Toys Trains "
                                    "Puzzles. Brio")
    # "Building" is in no review: the Ai et al. query keeps review-vocabulary words only
    assert set(data.query_text[1:]) == {"games toy train", "toy games puzzle", "toy games doll",
                                        "toy games train"}


def test_item_with_two_paths_yields_two_queries(tmp_path):
    raw = _write_raw(tmp_path / "raw")
    used = set()
    for seed in range(6):
        log, _ = read_amazon(raw, seed=seed)
        src = log.interactions.filter((pl.col("item") == "T00") & (pl.col("behaviour") == "src"))
        assert src.height == 8
        used |= set(src["query"])
    assert used == {"games toy train", "toy games puzzle"}


def test_leave_one_out_and_order(tmp_path):
    out, _ = _prepare(_write_raw(tmp_path / "raw"), tmp_path / "d")
    data = load_data(out)
    orig = _orig(data)
    users = dict(zip(*pl.read_parquet(out / "users.parquet").select("user_id", "orig_id")
                     .to_dict(as_series=False).values()))
    inverse = {v: k for k, v in users.items()}
    u03 = data.interactions.filter((pl.col("user_id") == inverse["U03"])
                                   & (pl.col("behaviour") == "rec")).sort("seq")
    assert [orig[i] for i in u03["item_id"]] == [f"T{(3 + j) % 16:02d}" for j in range(8)]
    assert u03["split"].to_list() == ["train"] * 6 + ["valid", "test"]
    # every purchase's src twin shares its seq and split
    both = data.interactions.group_by("user_id", "seq").agg(pl.col("behaviour").n_unique(),
                                                          pl.col("split").n_unique())
    assert (both["behaviour"] == 2).all() and (both["split"] == 1).all()


def test_2018_layout(tmp_path):
    out, report = _prepare(_write_raw(tmp_path / "raw", "2018"), tmp_path / "d")
    data = load_data(out)
    assert report.settings["layout"] == "2018"
    assert report.counts["interactions"] == {"rec": 128, "src": 128}
    assert report.dropped["metadata line repeating an item with an identical record"] == 1
    items = {r["orig_id"]: r for r in data.items.iter_rows(named=True)}
    # an HTML-only title falls back to the description's first sentence, tags stripped
    assert items["T01"]["text"] == "A wooden puzzle for all ages. Toys & Games Dolls. Brio"
    assert items["T00"]["text"] == "Toy T00 & friends. Toys & Games Building Toys Trains. Brio"
    assert items["T00"]["category"] == "Toys & Games > Building Toys > Trains"
    assert set(data.query_text[1:]) == {"games toy train", "toy games puzzle", "toy games doll",
                                        "toy games train"}
    assert any("description's first sentence (1)" in n for n in report.notes)


def test_min_user_option_and_explicit_file_names(tmp_path):
    raw = _write_raw(tmp_path / "raw")
    (raw / "notes.json").write_text("{}\n")  # a second candidate: needs --option reviews=
    with pytest.raises(DataError, match="several reviews files"):
        _prepare(raw, tmp_path / "d")
    _, report = _prepare(raw, tmp_path / "d", reviews="reviews_Toys_and_Games_5.json.gz",
                         meta="meta_Toys_and_Games.json.gz", min_user=3, min_item=1)
    assert report.counts["users"] == N_USERS + 1  # U99 (3 purchases) kept
    assert report.counts["items"] == N_ITEMS + 1  # T99 (1 purchase) kept


def test_clean_text():
    assert clean_text(SPAN) == ""
    assert clean_text("Disney &amp; Me <i>Magazine</i>") == "Disney & Me Magazine"
    assert clean_text("a < b and c") == "a < b and c"
    assert clean_text(None) == ""


def _replace_line(path: Path, number: int, text: str) -> None:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    lines[number - 1] = text
    _write_lines(path, lines)


REVIEWS = "reviews_Toys_and_Games_5.json.gz"
META = "meta_Toys_and_Games.json.gz"
BAD_INPUT = [
    (lambda f: (f / META).unlink(), "no metadata file meta_*.json[.gz] found"),
    (lambda f: (f / REVIEWS).unlink(), "no reviews file"),
    (lambda f: _replace_line(f / REVIEWS, 4, '{"reviewerID": "U00", "asin": '),
     f"{REVIEWS}, line 4: not valid JSON"),
    (lambda f: _replace_line(f / REVIEWS, 7, json.dumps(
        {**_review("U00", "T06", 6), "unixReviewTime": "May 13, 2014"})),
     f"{REVIEWS}, line 7, column 'unixReviewTime': unixReviewTime must be an integer"),
    (lambda f: _replace_line(f / REVIEWS, 2, json.dumps({"reviewerID": "U00"})),
     f"{REVIEWS}, line 2, column 'asin': missing or empty asin"),
    (lambda f: _replace_line(f / META, 3, "{'asin': 'T02', 'title': 'broken"),
     f"{META}, line 3: not valid JSON"),
    (lambda f: _replace_line(f / META, 4, repr({**_meta_2014("T02"), "title": "Other"})),
     f"{META}, line 4, column 'asin': duplicate item id 'T02' with different metadata "
     "(first on line 3)"),
    (lambda f: _replace_line(f / META, 2, repr({**_meta_2014("T01"), "categories": "Toys"})),
     f"{META}, line 2, column 'categories': expected a list of category paths"),
    (lambda f: _replace_line(f / META, 2, "['T01', 'Toys']"),
     f"{META}, line 2: expected an object, got list"),
]


@pytest.mark.parametrize("mutate,message", BAD_INPUT)
def test_bad_input_names_file_line_and_problem(tmp_path, mutate, message):
    raw = _write_raw(tmp_path / "raw")
    mutate(raw)
    out = tmp_path / "d"
    with pytest.raises(DataError) as err:
        _prepare(raw, out)
    assert message in str(err.value)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".d.tmp")]


def test_missing_explicit_file_and_bad_options(tmp_path):
    raw = _write_raw(tmp_path / "raw")
    with pytest.raises(DataError, match="metadata file is missing"):
        _prepare(raw, tmp_path / "d", meta="meta_Other.json.gz")
    with pytest.raises(DataError, match="min_user must be a positive integer"):
        _prepare(raw, tmp_path / "d", min_user="five")
    with pytest.raises(DataError, match="expected a folder"):
        _prepare(raw / REVIEWS, tmp_path / "d")


def test_too_few_items_for_the_negatives_suggests_a_smaller_number(tmp_path):
    raw = _write_raw(tmp_path / "raw")
    out = tmp_path / "d"
    with pytest.raises(DataError, match=r"interacted with 8 of the 16 items.*--negatives 8"):
        prepare("amazon", raw, out, n_negatives=9)
    assert not out.exists()
    prepare("amazon", raw, out, n_negatives=8)


def test_real_magazine_files(tmp_path):
    raw = shared_path("amazon-magazine-raw")
    with pytest.raises(DataError, match="--negatives 96 "):
        prepare("amazon", raw, tmp_path / "mag")
    out, report = prepare("amazon", raw, tmp_path / "mag", n_negatives=96)
    assert report.files == {"Magazine_Subscriptions_5.json.gz": 2375,
                            "meta_Magazine_Subscriptions.json.gz": 3385}
    assert report.settings["layout"] == "2018"
    assert report.dropped == {
        "repeated review of the same item by the same user (kept the earliest)": 73,
        "metadata line of an item no review names": 3136,
        "metadata line repeating an item with an identical record": 98,
        "review of an item without metadata": 60,
        "k-core: user with < 5 interactions": 280,
        "k-core: item with < 5 interactions": 79,
        "src twin not made: the item has no category query": 59,
    }
    c = report.counts
    assert (c["users"], c["items"], c["queries"]) == (274, 124, 51)
    assert c["interactions"] == {"rec": 1883, "src": 1824}
    assert c["by_split"]["test"] == {"rec": 274, "src": 266}
    assert c["by_split"]["valid"] == {"rec": 274, "src": 260}
    data = load_data(out)
    assert not any("<span" in t for t in data.item_text[1:])
    assert "magazine subscription fashion style women" in data.query_text
