"""The amazon-atomic adapter on hand-made files in the RecBole/UniSRec format, and on the
real Scientific files when ../shared/data is present."""

from pathlib import Path

import polars as pl
import pytest

from gensr.data import load_data
from gensr.data.prepare import prepare
from gensr.errors import DataError
from helpers import shared_path

TEXT = (
    "item_id:token\ttext:token_seq\n"
    + "".join(
        f"A{i:03d}\tThing {i} by Acme. Industrial & Scientific Lab {'Glass' if i % 2 else 'Tools'}"
        f" Beakers. Acme. \n"
        for i in range(130)
    )
)


def _write_atomic(folder: Path, n_users: int = 4, text: str = TEXT) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Lab.text").write_text(text)
    (folder / "Lab.item2index").write_text("".join(f"A{i:03d}\t{i}\n" for i in range(130)))
    (folder / "Lab.user2index").write_text("".join(f"U{u}\t{u}\n" for u in range(n_users)))
    header = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    train, valid, test = [header], [header], [header]
    for u in range(n_users):
        seq = [u * 5 + j for j in range(6)]
        for k in range(len(seq) - 3, 0, -1):
            train.append(f"{u}\t{' '.join(map(str, seq[:k]))}\t{seq[k]}\n")
        valid.append(f"{u}\t{' '.join(map(str, seq[:-2]))}\t{seq[-2]}\n")
        test.append(f"{u}\t{' '.join(map(str, seq[:-1]))}\t{seq[-1]}\n")
    (folder / "Lab.train.inter").write_text("".join(train))
    (folder / "Lab.valid.inter").write_text("".join(valid))
    (folder / "Lab.test.inter").write_text("".join(test))
    return folder


def test_atomic_roundtrip(tmp_path):
    raw = _write_atomic(tmp_path / "raw")
    out, report = prepare("amazon-atomic", raw, tmp_path / "d", n_negatives=10)
    data = load_data(out)
    c = report.counts
    assert c["users"] == 4 and c["interactions"]["rec"] == 24 and c["interactions"]["src"] == 24
    assert c["by_split"]["test"] == {"rec": 4, "src": 4}
    assert set(data.query_text[1:]) == {"industrial scientific lab glass beaker",
                                        "industrial scientific lab tool beaker"}
    # order rebuilt from the rows: user U0 bought A000..A005 in that order
    u0 = data.interactions.filter((pl.col("user_id") == 1) & (pl.col("behaviour") == "rec"))
    orig = dict(zip(data.items["item_id"].to_list(), data.items["orig_id"].to_list()))
    assert [orig[i] for i in u0.sort("seq")["item_id"]] == [f"A{i:03d}" for i in range(6)]
    assert (out / "report.md").exists()


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda f: (f / "Lab.valid.inter").unlink(), "file is missing"),
        (lambda f: (f / "Lab.text").write_text("item_id:token\tbody\nA000\tx\n"), "header"),
        (lambda f: (f / "Lab.text").write_text(TEXT + "A001\tagain. x. y. \n"),
         "duplicate item id 'A001'"),
        (lambda f: (f / "Lab.test.inter").write_text(
            "user_id:token\titem_id_list:token_seq\titem_id:token\n0\t1 2\t999\n"),
         "item index 999 is not in Lab.item2index"),
        (lambda f: (f / "Lab.test.inter").write_text(
            "user_id:token\titem_id_list:token_seq\titem_id:token\n0\t1 x\t2\n"),
         "ids must be integers"),
    ],
)
def test_atomic_bad_input_names_file_and_problem(tmp_path, mutate, message):
    raw = _write_atomic(tmp_path / "raw")
    mutate(raw)
    out = tmp_path / "d"
    with pytest.raises(DataError) as err:
        prepare("amazon-atomic", raw, out, n_negatives=10)
    assert message in str(err.value)
    assert "Lab." in str(err.value) or "raw" in str(err.value)
    # nothing half-written is left behind
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".d.tmp")]


def test_line_number_in_error(tmp_path):
    raw = _write_atomic(tmp_path / "raw")
    lines = (raw / "Lab.train.inter").read_text().splitlines()
    lines[3] = "0\t1 2"
    (raw / "Lab.train.inter").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"Lab.train.inter, line 4"):
        prepare("amazon-atomic", raw, tmp_path / "d", n_negatives=10)


def test_existing_output_is_not_overwritten_silently(tmp_path):
    raw = _write_atomic(tmp_path / "raw")
    out = tmp_path / "d"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="exists and is not empty"):
        prepare("amazon-atomic", raw, out, n_negatives=10)
    assert (out / "keep.txt").read_text() == "mine"


def test_real_scientific_files(tmp_path):
    raw = shared_path("amazon-scientific")
    out, report = prepare("amazon-atomic", raw, tmp_path / "sci")
    c = report.counts
    assert c["users"] == 8442 and c["items"] == 4385
    assert c["by_split"]["test"]["rec"] == 8442
    # 59,384 purchases in the test rows, +43 for 3 users whose test history the files
    # truncated at 50 and whose whole sequence the train rows hold
    assert c["interactions"]["rec"] == 59384 + 43
    assert any("truncated" in n for n in report.notes)
    assert c["queries"] > 500
