"""The csv adapter (a user's own interactions.csv + items.csv): the shipped example, timestamp
forms, options, and bad input naming file, line and column."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from gensr.data import load_data
from gensr.data.adapters.csv import parse_timestamp, read_csv_logs
from gensr.data.batching import eval_instances
from gensr.data.prepare import prepare
from gensr.errors import DataError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "csv"


def _copy_example(tmp_path: Path) -> Path:
    return Path(shutil.copytree(EXAMPLE, tmp_path / "raw"))


def test_example_prepares_with_the_default_negatives(tmp_path):
    out, report = prepare("csv", EXAMPLE, tmp_path / "d")
    data = load_data(out)
    c = report.counts
    assert (c["users"], c["items"]) == (10, 120)
    assert c["interactions"] == {"rec": 71, "src": 56}
    assert report.files == {"items.csv": 120, "interactions.csv": 127}
    # leave-one-out: each user's last event is test, the one before valid
    per_split = data.interactions.group_by("split").len().sort("split")
    assert dict(per_split.iter_rows()) == {"test": 10, "valid": 10, "train": 107}
    assert data.candidates("test")["candidates"].list.len().unique().to_list() == [100]
    items = {r["orig_id"]: r for r in data.items.iter_rows(named=True)}
    assert items["B301"]["category"] == "Books > Cooking > Baking"
    assert "sourdough bread starter" in data.query_text


def test_timestamp_forms():
    assert parse_timestamp("1709290800") == 1709290800
    assert parse_timestamp("2024-03-01T11:00:00Z") == 1709290800
    assert parse_timestamp("2024-03-01T12:00:00+01:00") == 1709290800
    assert parse_timestamp("2024-03-01 11:00") == 1709290800
    assert parse_timestamp("2024-03-01") == 1709251200
    assert parse_timestamp("next tuesday") is None
    assert parse_timestamp("1.5e9") is None


def test_order_options_and_day_split(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "items.csv").write_text("item,text\na,Apple\nb,Banana\nc,Cherry\nd,Date\ne,Elderberry\n")
    (raw / "log.csv").write_text(
        "user,item,timestamp,behaviour,query,note\n"
        "u1,b,2024-01-02,rec,,extra columns are ignored\n"
        "u1,a,2024-01-01,src,red fruit,\n"
        "u1,c,2024-01-02,rec,typed by mistake,\n"  # same time as line 2: file order
        "u2,d,1704153600,rec,,\n"
        "u2,a,1704240000,rec,,\n"
        "u3,d,2023-12-30,rec,,\n"
        "u3,a,2023-12-31,rec,,\n"
        "u3,b,2024-01-01T08:00:00,src,yellow fruit,\n"
    )
    log, report = read_csv_logs(raw, interactions="log.csv")
    u1 = log.interactions.filter(pl.col("user") == "u1").sort("timestamp", "event")
    assert u1["item"].to_list() == ["a", "b", "c"]
    assert u1["query"].to_list() == ["red fruit", None, None]
    assert any("1 rec row(s) carry a query" in n for n in report.notes)
    out, report = prepare("csv", raw, tmp_path / "d", split="day", n_negatives=1,
                          options={"interactions": "log.csv"})
    assert report.counts["by_split"]["test"] == {"rec": 1, "src": 0}  # 2024-01-03: u2's a
    assert report.counts["by_split"]["valid"] == {"rec": 3, "src": 0}  # the day before
    _, report = prepare("csv", raw, tmp_path / "e", n_negatives=1, overwrite=True,
                        options={"interactions": "log.csv", "min_user": 3})
    assert report.counts["users"] == 2
    assert report.dropped["user with < 3 interactions"] == 2
    assert report.dropped["item without interactions (items file)"] == 1


def _rewrite(path: Path, line: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")


BAD_INPUT = [
    (lambda f: (f / "interactions.csv").unlink(), "interactions.csv: file is missing"),
    (lambda f: (f / "items.csv").unlink(), "items.csv: file is missing"),
    (lambda f: _rewrite(f / "interactions.csv", 1, "user,item,timestamp,kind,query"),
     "interactions.csv, line 1, column 'behaviour': missing column(s) behaviour"),
    (lambda f: _rewrite(f / "items.csv", 1, "item,title,category"),
     "items.csv, line 1, column 'text': missing column(s) text"),
    (lambda f: _rewrite(f / "interactions.csv", 5, "alice,B301,next tuesday,rec,"),
     "interactions.csv, line 5, column 'timestamp': timestamp must be integer Unix seconds "
     "or an ISO 8601 date-time, found 'next tuesday'"),
    (lambda f: _rewrite(f / "interactions.csv", 7, "alice,B105,2024-03-06,buy,"),
     "interactions.csv, line 7, column 'behaviour': behaviour must be 'rec' or 'src', "
     "found 'buy'"),
    (lambda f: _rewrite(f / "interactions.csv", 3, "alice,B102,2024-03-02,src,"),
     "interactions.csv, line 3, column 'query': a 'src' (search) row needs a query"),
    (lambda f: _rewrite(f / "interactions.csv", 9, ",B106,2024-03-10,rec,"),
     "interactions.csv, line 9, column 'user': user is required, found an empty value"),
    (lambda f: _rewrite(f / "interactions.csv", 12, "alice,Z999,2024-03-17,rec,"),
     "interactions.csv, line 12, column 'item': item 'Z999' is not in items.csv"),
    (lambda f: _rewrite(f / "items.csv", 6, "B101,Another title,Books"),
     "items.csv, line 6, column 'item': duplicate item id 'B101' (also on line 2)"),
    (lambda f: (f / "interactions.csv").write_text(""),
     "interactions.csv: the file is empty"),
    (lambda f: _rewrite(f / "interactions.csv", 4, "alice,B103,2024-03-03,rec,,x,y,z"),
     "interactions.csv, line 4: cannot read the CSV: 8 fields where the header has 5"),
]


@pytest.mark.parametrize("mutate,message", BAD_INPUT)
def test_bad_input_names_file_line_and_problem(tmp_path, mutate, message):
    raw = _copy_example(tmp_path)
    mutate(raw)
    out = tmp_path / "d"
    with pytest.raises(DataError) as err:
        prepare("csv", raw, out)
    assert message in str(err.value)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".d.tmp")]


def test_src_rows_need_a_query_column_and_options_are_checked(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "items.csv").write_text("item,text\na,Apple\n")
    (raw / "interactions.csv").write_text("user,item,timestamp,behaviour\nu,a,1,src\n")
    with pytest.raises(DataError, match=r"line 2: a 'src' \(search\) row needs a query: the "
                                        "file has no 'query' column"):
        read_csv_logs(raw)
    with pytest.raises(DataError, match="min_item must be a positive integer"):
        read_csv_logs(raw, min_item="many")
    with pytest.raises(DataError, match="expected a folder"):
        read_csv_logs(raw / "items.csv")


def _movielens_like(raw: Path, with_event_column: bool) -> None:
    """One rating = one event written as two rows: a rec row and a src row (query = genre),
    as a user turning MovieLens into S&R logs would write it."""
    raw.mkdir()
    genres = ["comedy", "drama", "horror", "action"]
    items = ["item,text,category"] + [f"m{i},Movie {i},{genres[i % 4]}" for i in range(1, 121)]
    (raw / "items.csv").write_text("\n".join(items) + "\n")
    lines = ["user,item,timestamp,behaviour,query" + (",event" if with_event_column else "")]
    for u in range(1, 31):
        for k in range(8):
            item = 1 + (u * 37 + k * 11) % 120
            stamp = 881250949 + 3600 * (u * 100 + k)
            for behaviour, query in (("rec", ""), ("src", genres[item % 4])):
                row = f"u{u},m{item},{stamp},{behaviour},{query}"
                lines.append(row + (f",r{u}-{k}" if with_event_column else ""))
    (raw / "interactions.csv").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("with_event_column", [False, True])
def test_rec_and_src_rows_of_one_event_are_twins(tmp_path, with_event_column):
    raw = tmp_path / "raw"
    _movielens_like(raw, with_event_column)
    out, report = prepare("csv", raw, tmp_path / "d")
    data = load_data(out)
    inter = data.interactions
    # each (user, item, time) pair is one seq: the twins share it
    assert inter.group_by("user_id", "seq").len()["len"].unique().to_list() == [2]
    for split in ("valid", "test"):
        frame = data.candidates(split)
        assert sorted(frame["task"].unique().to_list()) == ["rec", "src"]  # both tasks
        table = eval_instances(data, split)
        hist, _, _ = data.sequences.history(table.user, table.seq, 50)
        target = np.take_along_axis(table.candidates, table.target_pos[:, None], axis=1)
        assert not (hist == target).any(), f"a {split} target is in its own history"
    assert report.counts["targets_in_own_history"] == {"valid": 0, "test": 0}
    assert any("as one event" in n for n in report.notes)


def test_target_in_own_history_is_warned_about(tmp_path):
    raw = tmp_path / "raw"
    _movielens_like(raw, False)
    text = (raw / "interactions.csv").read_text().splitlines()
    # the src twin one second later: no longer one event, so each target repeats its twin
    shifted = [text[0]] + [
        ",".join([*(f := line.split(","))[:2], str(int(f[2]) + (f[3] == "src")), *f[3:]])
        for line in text[1:]]
    (raw / "interactions.csv").write_text("\n".join(shifted) + "\n")
    _, report = prepare("csv", raw, tmp_path / "d")
    assert report.counts["targets_in_own_history"]["test"] > 0
    assert any("already in their own history" in n for n in report.notes)


def test_rows_of_one_event_need_one_timestamp(tmp_path):
    raw = tmp_path / "raw"
    _movielens_like(raw, True)
    lines = (raw / "interactions.csv").read_text().splitlines()
    f = lines[2].split(",")
    f[2] = str(int(f[2]) + 5)
    lines[2] = ",".join(f)
    (raw / "interactions.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="different timestamps") as err:
        prepare("csv", raw, tmp_path / "d")
    assert "line 3" in str(err.value)
