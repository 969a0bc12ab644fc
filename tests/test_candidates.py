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
    written = ["uniform", "bm25-hard", "popular"]  # dense-hard: tests/test_hard_sources.py
    assert stored_strategies(lab_dir) == written and set(written) < set(STRATEGIES)
    before = {p.name: p.read_bytes() for p in lab_dir.glob("candidates_*.parquet")}
    assert len(before) == 6  # 3 strategies x (valid, test)
    # regenerating with the same seed rewrites identical tables, and touches no other file
    for strategy in written:
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


def test_training_hard_negatives_come_from_the_query_top_bm25_pool(lab_dir):
    from gensr.data.batching import TrainSampler

    data = load_data(lab_dir)
    plain = TrainSampler(data, 3, seed=5)
    pool_size = 10
    hard = TrainSampler(data, 3, seed=5, hard_negatives=2, hard_pool=pool_size)
    a, order_a = hard.epoch(0)
    b, order_b = plain.epoch(0)
    assert np.array_equal(order_a, order_b)  # the same visit order and uniform stream
    src = hard.hard_rows
    assert len(src) > 0 and (a.task[src] == 1).all()
    rec = np.setdiff1d(np.arange(len(a)), src)
    assert np.array_equal(a.candidates[rec], b.candidates[rec])  # rec rows: all uniform
    # the last negative stays the uniform draw, unless one of the hard ones is that item:
    # then it is swapped for one of the row's unused uniform draws
    uniform = b.candidates[src, 3]
    clash = (uniform[:, None] == a.candidates[src, 1:3]).any(axis=1)
    assert clash.any() and (~clash).sum() > clash.sum()  # both paths on this small catalogue
    assert np.array_equal(a.candidates[src, 3][~clash], uniform[~clash])
    assert all(a.candidates[r, 3] in b.candidates[r, 1:3] for r in src[clash])
    negs = a.candidates[src, 1:]
    assert all(len(set(row)) == 3 for row in negs)  # distinct, never the positive
    assert not (negs == a.candidates[src, :1]).any()
    assert not hard.interacted.contains(a.user[src], negs).any()  # never a training item
    index = BM25Index(data.item_text, data.item_category)
    every = np.arange(1, data.n_items + 1)
    for row in src[:40]:
        user, query = a.user[row], a.query[row]
        scores = index.score(analyze(data.query_text[query]), every)
        free = ~hard.interacted.contains(np.full(len(every), user), every)
        # the pool: the user's pool_size best untouched items for the query
        cut = np.sort(scores[free])[::-1][pool_size - 1]
        assert (scores[a.candidates[row, 1:3] - 1] >= cut).all()
        assert scores[a.candidates[row, 1:3] - 1].max() > 0
    c, _ = hard.epoch(1)
    assert not np.array_equal(c.candidates[src, 1:3], a.candidates[src, 1:3])  # redrawn
    again, _ = TrainSampler(data, 3, seed=5, hard_negatives=2, hard_pool=pool_size).epoch(0)
    assert np.array_equal(again.candidates, a.candidates)  # seeded


def test_training_hard_negatives_are_checked(lab_dir):
    from gensr.data.batching import TrainSampler
    from gensr.errors import ConfigError
    from gensr.train.config import TrainConfig

    data = load_data(lab_dir)
    with pytest.raises(DataError, match="hard_negatives must be in"):
        TrainSampler(data, 3, hard_negatives=4)
    with pytest.raises(DataError, match="hard_pool"):
        TrainSampler(data, 3, hard_negatives=2, hard_pool=1)
    with pytest.raises(ConfigError, match="train.hard_negatives"):
        TrainConfig(n_negatives=3, hard_negatives=5)
    with pytest.raises(ConfigError, match="train.hard_pool"):
        TrainConfig(hard_negatives=2, hard_pool=1)
