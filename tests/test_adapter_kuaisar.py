"""The kuaisar adapter on small CSVs written here in the documented KuaiSAR raw format (every
documented column, realistic values): positives, the fixed-point filter, the by-day split on
Beijing days, keyword/caption rendering and bad input."""

from __future__ import annotations

import csv
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest

from gensr.data import load_data
from gensr.data.adapters.kuaisar import read_kuaisar
from gensr.data.prepare import prepare
from gensr.errors import DataError

BEIJING = timezone(timedelta(hours=8))
DAY1 = datetime(2023, 5, 22, tzinfo=BEIJING)
REC_HEADER = ["user_id", "item_id", "playing_time", "duration_ms", "time", "timestamp", "click",
              "forward", "like", "follow", "search", "search_item_related"]
SRC_HEADER = ["user_id", "search_session_id", "search_session_time", "search_session_timestamp",
              "keyword", "search_source", "item_id", "click_cnt", "item_type"]
ITEM_HEADER = ["item_id", "caption", "author_id", "item_type", "upload_time", "upload_type"] + [
    f"{level}_level_category_{what}" for level in ("first", "second", "third", "fourth")
    for what in ("id", "name", "name_en")]
CATEGORIES = [  # (id, Chinese name, English name) per level; 0 / 空 / empty = no level
    [(9, "搞笑", "Funny"), (136, "搞笑段子", "Funny joke"), (0, "空", "empty"), (0, "空", "empty")],
    [(21, "美食", "Food"), (301, "家常菜", "Home cooking"), (3012, "烘焙", "Baking"),
     (0, "空", "empty")],
]
N_CORE = 12  # core users 101..112 and popular items 2000..2011
X_ITEM, Y_ITEM = 3001, 3002  # items that fall under 5 interactions (first and second round)
C_USER, D_USER, S_USER, R_USER = 201, 202, 203, 204


def _at(day: int, hour: int, minute: int = 0) -> datetime:
    return DAY1 + timedelta(days=day - 1, hours=hour, minutes=minute)


class KuaiSARLog:
    """Rows of the three files, written with the documented columns."""

    def __init__(self) -> None:
        self.rec: list[list[object]] = []
        self.src: list[list[object]] = []
        self.sessions = 0

    def view(self, user: int, item: int, when: datetime, click: int = 1) -> None:
        ms = int(when.timestamp() * 1000) + 123
        self.rec.append([user, item, 60792.0, 45400.0, when.strftime("%Y-%m-%d %H:%M:%S"),
                         f"{float(ms)}", click, 0, click, 0, 0, 0])

    def search(self, user: int, when: datetime, keyword: list[int],
               shown: list[tuple[int, int, str]]) -> None:
        """One session: ``shown`` = (item_id, click_cnt, item_type) of the results."""
        self.sessions += 1
        ms = int(when.timestamp() * 1000) + 919
        for item, clicks, item_type in shown:
            self.src.append([user, self.sessions, when.strftime("%Y-%m-%d %H:%M:%S"), ms,
                             str(keyword), "USER_INPUT", item, clicks, item_type])

    def items(self) -> list[list[object]]:
        rows = []
        ids = [2000 + i for i in range(N_CORE)] + [X_ITEM, Y_ITEM, 5001, 5002, 5003]
        for n, item in enumerate(ids):
            caption = "[]" if item == 5003 else str([1, 213, 24 + n])
            levels = [(0, "空", "empty")] * 4 if item == 5002 else CATEGORIES[n % 2]
            rows.append([item, caption, 10 + n, "NORMAL", "2023-04-22", "LongImport",
                         *[v for level in levels for v in level]])
        return rows

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for name, header, rows in (("rec_inter.csv", REC_HEADER, self.rec),
                                   ("src_inter.csv", SRC_HEADER, self.src),
                                   ("item_features.csv", ITEM_HEADER, self.items())):
            with (folder / name).open("w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh, lineterminator="\n")
                writer.writerow(header)
                writer.writerows(rows)
        return folder


def _keyword(item: int) -> list[int]:
    return [10 + item % 100, 40 + item % 100]


def build_log() -> KuaiSARLog:
    """12 core users who survive; users C, D, S, R and items X, Y who must not.

    Core user c (id 101+c) watches popular items c..c+5 (mod 12) on days 1-6, searches and
    clicks item c+6 on day 7, watches c+7 on day 9 and c+9 on day 10 and searches and clicks
    c+8 on day 10. Each popular item thus has 6 rec interactions and more from other users.

    The cascade (min 5): X has 4 interactions -> dropped in round 1. C has 5, one on X -> 4 ->
    dropped in round 2; Y had 5, one from C -> 4 -> dropped in round 2; D had 5, one on Y ->
    dropped in round 3. S's only search click is on X -> no src left -> dropped in round 2.
    R has rec interactions only -> dropped in round 1.
    """
    log = KuaiSARLog()
    pop = [2000 + i for i in range(N_CORE)]
    for c in range(N_CORE):
        user = 101 + c
        for k in range(6):
            log.view(user, pop[(c + k) % 12], _at(k + 1, 10, c))
        log.view(user, pop[(c + 10) % 12], _at(2, 11), click=0)
        other = [(90000 + c, 1, "LIVE")] if c < 3 else [(80000, 1, "USER")] if c == 3 else []
        target = pop[(c + 6) % 12]
        log.search(user, _at(7, 20), _keyword(target),
                   [(pop[(c + 10) % 12], 0, "VIDEO"), (target, 1, "VIDEO"), *other])
        log.view(user, pop[(c + 7) % 12], _at(9, 12))
        target = pop[(c + 8) % 12]
        log.search(user, _at(10, 21), _keyword(target), [(target, 1, "VIDEO")])
        # user 101 watches its last item at 00:30 Beijing time: still the last *Beijing* day
        log.view(user, pop[(c + 9) % 12], _at(10, 0, 30) if c == 0 else _at(10, 12))
    for user in (101, 102):
        log.view(user, X_ITEM, _at(3, 9))
    for user in (101, 102, 103):
        log.view(user, Y_ITEM, _at(4, 9))
    for item, day in ((pop[0], 2), (pop[1], 2), (X_ITEM, 3), (Y_ITEM, 3)):
        log.view(C_USER, item, _at(day, 15))
    log.search(C_USER, _at(4, 15), _keyword(pop[2]), [(pop[2], 1, "VIDEO")])
    for item, day in ((pop[0], 2), (Y_ITEM, 3), (pop[3], 4)):
        log.view(D_USER, item, _at(day, 16))
    log.search(D_USER, _at(3, 16), _keyword(pop[1]), [(pop[1], 1, "VIDEO")])
    log.search(D_USER, _at(4, 17), _keyword(pop[2]), [(pop[2], 2, "VIDEO")])
    for k in range(5):
        log.view(S_USER, pop[k], _at(2 + k % 3, 14, k))
    log.search(S_USER, _at(4, 18), _keyword(X_ITEM), [(X_ITEM, 1, "VIDEO")])
    for k in range(8):
        log.view(R_USER, pop[k], _at(1 + k % 6, 13, k))
    return log


def _prepare(raw: Path, out: Path, **options):
    return prepare("kuaisar", raw, out, n_negatives=2, options=options)


def test_positives_filter_and_report(tmp_path):
    _, report = _prepare(build_log().write(tmp_path / "raw"), tmp_path / "d")
    assert report.files == {"item_features.csv": 17, "rec_inter.csv": 133, "src_inter.csv": 44}
    assert report.dropped == {
        "rec row not clicked (click = 0)": 12,
        "src row not clicked (click_cnt = 0)": 12,
        "src click on a result of item_type LIVE": 3,
        "src click on a result of item_type USER": 1,
        "user without both rec and src interactions": 8 + 5,  # R (round 1), S (round 2)
        "user with < 5 interactions": 4 + 4,  # C (round 2), D (round 3)
        "item with < 5 interactions": 4 + 4,  # X (round 1), Y (round 2)
    }
    c = report.counts
    assert (c["users"], c["items"]) == (N_CORE, N_CORE)
    assert c["interactions"] == {"rec": 8 * N_CORE, "src": 2 * N_CORE}


def test_fixed_point_drops_the_cascade(tmp_path):
    log, _ = read_kuaisar(build_log().write(tmp_path / "raw"))
    users = set(log.interactions["user"].unique())
    items = set(log.interactions["item"].unique())
    assert users == {str(101 + c) for c in range(N_CORE)}
    assert not {str(u) for u in (C_USER, D_USER, S_USER, R_USER)} & users
    assert not {str(X_ITEM), str(Y_ITEM)} & items
    # with lower thresholds the cascade stops: only R (no src) and S (src on X kept) differ
    log, _ = read_kuaisar(tmp_path / "raw", min_user=4, min_item=4)
    assert {str(u) for u in (C_USER, D_USER, S_USER)} <= set(log.interactions["user"])
    assert str(R_USER) not in set(log.interactions["user"])


def test_split_by_beijing_day(tmp_path):
    out, report = _prepare(build_log().write(tmp_path / "raw"), tmp_path / "d")
    c = report.counts["by_split"]
    assert c["test"] == {"rec": N_CORE, "src": N_CORE}  # day 10
    assert c["valid"] == {"rec": N_CORE, "src": 0}  # day 9
    assert c["train"] == {"rec": 6 * N_CORE, "src": N_CORE}
    data = load_data(out)
    inter = data.interactions
    last_day = (_at(10, 0) - DAY1).days + (DAY1.timestamp() + 8 * 3600) // 86400
    assert set(inter.filter(pl.col("split") == "test")["timestamp"] // 86400) == {last_day}
    # user 101's view at 00:30 Beijing (16:30 UTC the day before) is on the last day
    users = pl.read_parquet(out / "users.parquet")
    u101 = users.filter(pl.col("orig_id") == "101")["user_id"][0]
    early = inter.filter((pl.col("user_id") == u101) & (pl.col("split") == "test")
                         & (pl.col("behaviour") == "rec"))
    expected = int(_at(10, 0, 30).timestamp()) + 8 * 3600
    assert early["timestamp"].to_list() == [expected]
    assert (early["timestamp"] % 86400).to_list() == [30 * 60]


def test_query_caption_and_category_rendering(tmp_path):
    out, _ = _prepare(build_log().write(tmp_path / "raw"), tmp_path / "d")
    data = load_data(out)
    items = {r["orig_id"]: r for r in data.items.iter_rows(named=True)}
    assert items["2000"]["text"] == "w1 w213 w24. Funny Funny joke"
    assert items["2000"]["category"] == "Funny > Funny joke"
    assert items["2001"]["text"] == "w1 w213 w25. Food Home cooking Baking"
    assert items["2001"]["category"] == "Food > Home cooking > Baking"
    queries = set(data.query_text[1:])
    assert queries == {f"w{10 + i} w{40 + i}" for i in range(N_CORE)}
    log, _ = read_kuaisar(tmp_path / "raw")
    src = log.interactions.filter(pl.col("behaviour") == "src")
    assert (src["query"] == src["item"].map_elements(
        lambda i: f"w{10 + int(i) % 100} w{40 + int(i) % 100}", return_dtype=pl.Utf8)).all()
    assert log.interactions.filter(pl.col("behaviour") == "rec")["query"].is_null().all()
    assert (log.interactions["event"] // 1000 + 8 * 3600 == log.interactions["timestamp"]).all()


def _edit(path: Path, line: int, column: str, value: str) -> None:
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    rows[line - 1][rows[0].index(column)] = value
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)


def _drop_column(path: Path, column: str) -> None:
    frame = pl.read_csv(path, infer_schema=False)
    frame.drop(column).write_csv(path)


BAD_INPUT = [
    (lambda f: (f / "src_inter.csv").unlink(), "src_inter.csv: file is missing"),
    (lambda f: _drop_column(f / "rec_inter.csv", "click"),
     "rec_inter.csv, line 1, column 'click': missing column(s) click"),
    (lambda f: _edit(f / "rec_inter.csv", 5, "timestamp", "yesterday"),
     "rec_inter.csv, line 5, column 'timestamp': timestamp must be a Unix time in "
     "milliseconds, found 'yesterday'"),
    (lambda f: _edit(f / "rec_inter.csv", 9, "click", "2"),
     "rec_inter.csv, line 9, column 'click': click must be 0 or 1, found '2'"),
    (lambda f: _edit(f / "rec_inter.csv", 3, "user_id", "u-17"),
     "rec_inter.csv, line 3, column 'user_id': user_id must be an integer, found 'u-17'"),
    (lambda f: _edit(f / "rec_inter.csv", 4, "click", ""),
     "rec_inter.csv, line 4, column 'click': click must be 0 or 1, found an empty value"),
    (lambda f: _edit(f / "src_inter.csv", 6, "keyword", "cheap flights"),
     "src_inter.csv, line 6, column 'keyword': keyword must be a list of word ids"),
    (lambda f: _edit(f / "src_inter.csv", 2, "click_cnt", "0.5"),
     "src_inter.csv, line 2, column 'click_cnt': click_cnt must be a non-negative integer"),
    (lambda f: _edit(f / "item_features.csv", 4, "item_id", "2000"),
     "item_features.csv, line 4, column 'item_id': duplicate item id 2000 (also on line 2)"),
    (lambda f: _edit(f / "item_features.csv", 3, "caption", "funny cat"),
     "item_features.csv, line 3, column 'caption': caption must be a list of word ids"),
    (lambda f: _edit(f / "rec_inter.csv", 7, "item_id", "7777"),
     "rec_inter.csv, line 7, column 'item_id': item 7777 is not in item_features.csv"),
    (lambda f: (f / "rec_inter.csv").write_text(""), "rec_inter.csv: not a CSV file"),
]


@pytest.mark.parametrize("mutate,message", BAD_INPUT)
def test_bad_input_names_file_line_and_problem(tmp_path, mutate, message):
    raw = build_log().write(tmp_path / "raw")
    mutate(raw)
    out = tmp_path / "d"
    with pytest.raises(DataError) as err:
        _prepare(raw, out)
    assert message in str(err.value)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".d.tmp")]


def test_unknown_items_can_be_dropped_and_options_are_checked(tmp_path):
    raw = build_log().write(tmp_path / "raw")
    _edit(raw / "rec_inter.csv", 7, "item_id", "7777")
    _, report = _prepare(raw, tmp_path / "d", unknown_items="drop")
    assert report.dropped["rec interaction with an item not in item_features.csv"] == 1
    with pytest.raises(DataError, match="unknown_items must be"):
        _prepare(raw, tmp_path / "e", unknown_items="ignore")
    with pytest.raises(DataError, match="min_item must be a positive integer"):
        _prepare(raw, tmp_path / "e", min_item=0)
    # LIVE clicks count when asked for (their items must then be in item_features.csv)
    fresh = build_log().write(tmp_path / "fresh")
    with pytest.raises(DataError, match=r"src_inter.csv, line \d+, column 'item_id': item 90000 "
                       "is not in item_features.csv"):
        _prepare(fresh, tmp_path / "e", src_item_types=["VIDEO", "LIVE"])


def test_float_and_integer_timestamps_agree(tmp_path):
    raw = build_log().write(tmp_path / "raw")
    log_a, _ = read_kuaisar(raw)
    frame = pl.read_csv(raw / "rec_inter.csv", infer_schema=False)
    frame.with_columns(
        pl.col("timestamp").cast(pl.Float64).map_elements(lambda v: f"{v:.6e}",
                                                          return_dtype=pl.Utf8)
    ).write_csv(raw / "rec_inter.csv")  # "1.684742e+12": second precision is lost
    log_b, _ = read_kuaisar(raw)
    assert log_a.interactions.height == log_b.interactions.height


def test_padded_values_and_crlf_line_ends_are_read(tmp_path):
    raw = build_log().write(tmp_path / "raw")
    log_a, _ = read_kuaisar(raw)
    _edit(raw / "rec_inter.csv", 2, "user_id", " 101 ")  # polars cannot parse it typed
    for name in ("rec_inter.csv", "src_inter.csv", "item_features.csv"):
        path = raw / name
        path.write_bytes(path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    log_b, _ = read_kuaisar(raw)
    assert log_a.interactions.sort("event", "user").equals(log_b.interactions.sort("event",
                                                                                 "user"))
    assert log_a.items.sort("item").equals(log_b.items.sort("item"))
