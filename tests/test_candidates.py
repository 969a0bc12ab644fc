"""Evaluation candidate strategies (uniform, bm25-hard, popular) side by side in one data
directory, on hand-made amazon-atomic files (every purchase a rec row and a src twin)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from gensr.cli import app
from gensr.data import load_data
from gensr.data.bm25 import BM25Index
from gensr.data.candidates import STRATEGIES, stored_strategies, write_candidates
from gensr.data.prepare import prepare
from gensr.data.text import analyze
from gensr.errors import DataError

N_ITEMS = 150
N_NEG = 20
CATEGORIES = ["Glass Beakers", "Hand Tools", "Adhesive Tape", "Safety Gloves", "Lab Meters"]
TITLE_WORDS = ["glass", "beaker", "tool", "tape", "glove", "meter", "steel", "clear", "heavy",
               "small", "digital", "safety"]


def _text(i: int) -> str:
    words = " ".join(TITLE_WORDS[(i * k + i // 7) % len(TITLE_WORDS)] for k in (1, 3, 5))
    return (f"Item {i} {words}. Industrial & Scientific Lab {CATEGORIES[i % len(CATEGORIES)]}."
            f" Acme.")


def _write_atomic(folder, n_users: int = 40) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Lab.text").write_text("item_id:token\ttext:token_seq\n" + "".join(
        f"A{i:03d}\t{_text(i)} \n" for i in range(N_ITEMS)))
    (folder / "Lab.item2index").write_text("".join(f"A{i:03d}\t{i}\n" for i in range(N_ITEMS)))
    (folder / "Lab.user2index").write_text("".join(f"U{u}\t{u}\n" for u in range(n_users)))
    header = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    train, valid, test = [header], [header], [header]
    rng = np.random.default_rng(3)
    for u in range(n_users):
        seq = [int(i) for i in rng.choice(N_ITEMS, size=8, replace=False)]
        for k in range(len(seq) - 3, 0, -1):
            train.append(f"{u}\t{' '.join(map(str, seq[:k]))}\t{seq[k]}\n")
        valid.append(f"{u}\t{' '.join(map(str, seq[:-2]))}\t{seq[-2]}\n")
        test.append(f"{u}\t{' '.join(map(str, seq[:-1]))}\t{seq[-1]}\n")
    (folder / "Lab.train.inter").write_text("".join(train))
    (folder / "Lab.valid.inter").write_text("".join(valid))
    (folder / "Lab.test.inter").write_text("".join(test))


@pytest.fixture(scope="module")
def lab_dir(tmp_path_factory):
    raw = tmp_path_factory.mktemp("lab") / "raw"
    _write_atomic(raw)
    out, _ = prepare("amazon-atomic", raw, raw.parent / "data", n_negatives=N_NEG)
    data = load_data(out)
    for strategy in ("bm25-hard", "popular"):
        write_candidates(data, strategy)
    return out


def _touched(data) -> dict[int, set[int]]:
    inter = data.interactions
    out: dict[int, set[int]] = {}
    for u, i in zip(inter["user_id"].to_list(), inter["item_id"].to_list()):
        out.setdefault(u, set()).add(i)
    return out


def _negatives(row: dict) -> list[int]:
    cands = list(row["candidates"])
    assert cands[row["target_pos"]] == row["target_item"]
    return cands[: row["target_pos"]] + cands[row["target_pos"] + 1:]


@pytest.mark.parametrize("split", ["valid", "test"])
def test_bm25_hard_negatives_are_the_top_bm25_untouched_items(lab_dir, split):
    data = load_data(lab_dir)
    touched = _touched(data)
    index = BM25Index(data.item_text, data.item_category)
    every = np.arange(1, data.n_items + 1)
    frame = data.candidates(split, "bm25-hard").filter(pl.col("task") == "src")
    assert frame.height > 0
    for row in frame.iter_rows(named=True):
        negs = _negatives(row)
        assert len(negs) == N_NEG and len(set(negs)) == N_NEG
        assert row["target_item"] not in negs
        assert not set(negs) & touched[row["user_id"]]  # never an item of the user, any split
        scores = index.score(analyze(data.query_text[row["query_id"]]), every)
        free = np.array([i not in touched[row["user_id"]] for i in every])
        chosen = np.isin(every, negs)
        # every negative scores at least as high as every untouched item left out
        assert scores[chosen].min() >= scores[free & ~chosen].max()
        assert scores[chosen].max() > 0  # the query matches: not a uniform draw
    assert frame.height >= 40


def test_bm25_hard_keeps_the_uniform_instances_and_rec_rows(lab_dir):
    data = load_data(lab_dir)
    key = ["instance_id", "user_id", "task", "query_id", "seq", "target_item"]
    for split in ("valid", "test"):
        uniform = data.candidates(split)
        for strategy in ("bm25-hard", "popular"):
            other = data.candidates(split, strategy)
            assert other.select(key).equals(uniform.select(key))
        hard = data.candidates(split, "bm25-hard")
        rec = pl.col("task") == "rec"
        assert hard.filter(rec).equals(uniform.filter(rec))  # rec: the uniform rows exactly
        assert not hard.filter(~rec)["candidates"].equals(uniform.filter(~rec)["candidates"])


def test_popular_negatives_are_untouched_and_lean_to_popular_items(lab_dir):
    data = load_data(lab_dir)
    touched = _touched(data)
    counts = data.popularity()
    mean_count = {}
    for strategy in ("uniform", "popular"):
        negs_all = []
        for split in ("valid", "test"):
            for row in data.candidates(split, strategy).iter_rows(named=True):
                negs = _negatives(row)
                assert len(set(negs)) == N_NEG and not set(negs) & touched[row["user_id"]]
                negs_all += negs
        mean_count[strategy] = counts[negs_all].mean()
    assert mean_count["popular"] > 1.2 * mean_count["uniform"]


def test_same_seed_same_files_and_the_strategies_coexist(lab_dir, tmp_path):
    data = load_data(lab_dir)
    assert stored_strategies(lab_dir) == list(STRATEGIES)
    before = {p.name: p.read_bytes() for p in lab_dir.glob("candidates_*.parquet")}
    assert len(before) == 6  # 3 strategies x (valid, test)
    # regenerating with the same seed rewrites identical tables, and touches no other file
    for strategy in STRATEGIES:
        card = write_candidates(data, strategy, overwrite=True)
        assert card["seed"] == 0 and card["n_negatives"] == N_NEG
    for name, content in before.items():
        assert pl.read_parquet(lab_dir / name).equals(pl.read_parquet(_bytes(tmp_path, name,
                                                                             content)))
    # another seed: other ties and another shuffle
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in lab_dir.iterdir():
        if p.is_file():
            (copy / p.name).write_bytes(p.read_bytes())
    write_candidates(load_data(copy), "bm25-hard", seed=1, overwrite=True)
    assert not pl.read_parquet(copy / "candidates_test.bm25-hard.parquet").equals(
        pl.read_parquet(lab_dir / "candidates_test.bm25-hard.parquet"))
    assert pl.read_parquet(copy / "candidates_test.parquet").equals(
        pl.read_parquet(lab_dir / "candidates_test.parquet"))


def _bytes(tmp_path, name, content):
    path = tmp_path / f"before_{name}"
    path.write_bytes(content)
    return path


def test_errors_name_the_problem(lab_dir, tmp_path):
    data = load_data(lab_dir)
    with pytest.raises(DataError, match="unknown candidate strategy 'hard'"):
        write_candidates(data, "hard")
    with pytest.raises(DataError, match="exists .use --overwrite"):
        write_candidates(data, "bm25-hard")
    bare = tmp_path / "bare"
    bare.mkdir()
    for p in lab_dir.iterdir():
        if p.is_file() and ".bm25-hard." not in p.name:
            (bare / p.name).write_bytes(p.read_bytes())
    with pytest.raises(DataError, match="gensr data candidates .* --strategy bm25-hard"):
        load_data(bare).candidates("test", "bm25-hard")


def test_cli_data_candidates(lab_dir, tmp_path):
    copy = tmp_path / "d"
    copy.mkdir()
    for p in lab_dir.iterdir():
        if p.is_file() and not p.name.endswith((".popular.parquet", ".popular.json")):
            (copy / p.name).write_bytes(p.read_bytes())
    runner = CliRunner()
    result = runner.invoke(app, ["data", "candidates", str(copy), "--strategy", "popular"])
    assert result.exit_code == 0, result.output
    assert "candidates_test.popular.parquet" in result.output
    assert (copy / "candidates.popular.json").exists()
    stats = runner.invoke(app, ["data", "stats", str(copy)])
    assert "candidate strategies stored: uniform, bm25-hard, popular" in stats.output
    bad = subprocess.run([sys.executable, "-c", "from gensr.cli import main; main()", "data",
                          "candidates", str(copy), "--strategy", "nope"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown candidate strategy 'nope'" in bad.stdout
    assert "Traceback" not in bad.stdout + bad.stderr


def test_evaluate_reads_the_chosen_strategy(lab_dir):
    from gensr.errors import ConfigError
    from gensr.eval.runner import evaluate_run

    uniform = evaluate_run(run_dir=None, model="bm25", data=lab_dir, split="test")
    hard = evaluate_run(run_dir=None, model="bm25", data=lab_dir, split="test",
                        candidates="bm25-hard")
    assert hard["src"]["n"] == uniform["src"]["n"]
    # BM25 separates the target from uniform negatives, not from BM25's own top items
    assert hard["src"]["N@10"] < uniform["src"]["N@10"] - 0.1
    with pytest.raises(ConfigError, match="no effect with --full"):
        evaluate_run(run_dir=None, model="pop", data=lab_dir, full=True, candidates="popular")
    result = CliRunner().invoke(app, ["evaluate", "--model", "pop", "--data", str(lab_dir),
                                      "--candidates", "popular"])
    assert result.exit_code == 0 and "popular candidates" in result.output
