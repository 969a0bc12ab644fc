"""Canonical data, splits, candidates and the reference scorers on the synthetic world."""

import json

import numpy as np
import polars as pl
import pytest
import torch

from gensr.data import load_data
from gensr.data.batching import TrainSampler, eval_instances
from gensr.eval import evaluate
from gensr.models import model_class
from gensr.models.base import ModelConfig, SRModel
from helpers import SeenThenTarget


def _scorer(name, data):
    cls = model_class(name)
    return cls(cls.config_class(), data)


def test_ids_contiguous_and_padding_reserved(tiny_data):
    inter = tiny_data.interactions
    assert inter["user_id"].min() == 1 and inter["user_id"].max() == tiny_data.n_users
    assert sorted(tiny_data.items["item_id"].to_list()) == list(range(1, tiny_data.n_items + 1))
    assert tiny_data.item_text[0] == "" and len(tiny_data.item_text) == tiny_data.n_items + 1
    src = inter.filter(pl.col("behaviour") == "src")
    assert src["query_id"].null_count() == 0
    assert inter.filter(pl.col("behaviour") == "rec")["query_id"].null_count() == inter.filter(
        pl.col("behaviour") == "rec").height
    meta = json.loads((tiny_data.path / "meta.json").read_text())
    assert meta["fingerprint"] == tiny_data.fingerprint


def test_no_split_leakage(tiny_data):
    inter = tiny_data.interactions
    per_user = inter.group_by("user_id", "split").agg(pl.col("seq").min().alias("lo"),
                                                      pl.col("seq").max().alias("hi"))
    wide = {(u, s): (lo, hi) for u, s, lo, hi in per_user.iter_rows()}
    for (u, s), (lo, _) in wide.items():
        if s in ("valid", "test"):
            # nothing of the training split comes at or after a held-out event
            train_hi = wide.get((u, "train"), (None, -1))[1]
            assert train_hi < lo
    test_keys = set(zip(*inter.filter(pl.col("split") == "test")
                        .select("user_id", "seq", "behaviour").to_dict(as_series=False).values()))
    train_keys = set(zip(*inter.filter(pl.col("split") == "train")
                         .select("user_id", "seq", "behaviour").to_dict(as_series=False).values()))
    assert not test_keys & train_keys


def test_candidates_disjoint_from_history_and_shuffled(tiny_data):
    inter = tiny_data.interactions
    seen = inter.group_by("user_id").agg(pl.col("item_id"))
    seen = {u: set(items) for u, items in seen.iter_rows()}
    cands = tiny_data.candidates("test")
    positions = []
    for row in cands.iter_rows(named=True):
        c = row["candidates"]
        assert len(c) == 100 and len(set(c)) == 100
        assert c[row["target_pos"]] == row["target_item"]
        negatives = set(c) - {row["target_item"]}
        assert not negatives & seen[row["user_id"]]
        positions.append(row["target_pos"])
    # the target is not always in one place (shuffled storage)
    assert len(set(positions)) > 20


def test_history_is_strictly_before_the_instance(tiny_data):
    table = eval_instances(tiny_data, "test")
    batch = table.make_batch(tiny_data, np.arange(len(table)), 50)
    store = tiny_data.sequences
    for i in range(0, len(table), 17):
        u, s = table.user[i], table.seq[i]
        rows = slice(store.indptr[u], store.indptr[u + 1])
        expected = store.item[rows][store.seq[rows] < s][-50:]
        got = batch.hist_item[i][batch.hist_item[i] > 0].numpy()
        assert np.array_equal(got, expected)


def test_train_sampler_negatives_are_unseen_and_deterministic(tiny_data):
    sampler = TrainSampler(tiny_data, n_negatives=4, seed=3)
    a, order_a = sampler.epoch(0)
    b, order_b = sampler.epoch(0)
    c, _ = sampler.epoch(1)
    assert np.array_equal(a.candidates, b.candidates) and np.array_equal(order_a, order_b)
    assert not np.array_equal(a.candidates, c.candidates)
    assert not sampler.interacted.contains(a.user, a.candidates[:, 1:]).any()
    assert (a.labels[:, 0] == 1).all() and (a.labels[:, 1:] == 0).all()


def test_reference_scorers_on_synthetic(synthetic_data_dir):
    data = load_data(synthetic_data_dir)
    rand = evaluate(_scorer("random", data), data, "test", progress=False)
    pop = evaluate(_scorer("pop", data), data, "test", progress=False)
    bm25 = evaluate(_scorer("bm25", data), data, "test", progress=False)
    for task in ("rec", "src"):
        assert rand[task]["R@5"] == pytest.approx(0.05, abs=0.02)
        assert pop[task]["R@5"] > rand[task]["R@5"] + 0.05
    assert "rec" not in bm25
    assert bm25["src"]["R@5"] > pop["src"]["R@5"] + 0.2


def test_history_and_query_carry_signal(synthetic_data_dir):
    """A scorer that reads the history's categories beats popularity on rec, and adding the
    query (BM25) beats it on search: the synthetic world has real structure."""

    data = load_data(synthetic_data_dir)
    cats = {c: i + 1 for i, c in enumerate(sorted(set(data.item_category[1:])))}
    item_cat = torch.tensor([0] + [cats[c] for c in data.item_category[1:]])
    pop, bm25 = _scorer("pop", data), _scorer("bm25", data)

    class CategoryHistory(SRModel):
        name = "category-history"

        def __init__(self, use_query: bool):
            super().__init__(ModelConfig(max_his_len=20), data)
            self.use_query = use_query

        def score(self, batch):
            hist = item_cat[batch.hist_item] * (batch.hist_item > 0)
            cand = item_cat[batch.candidates]
            affinity = (hist[:, None, :] == cand[:, :, None]).sum(-1).double()
            score = affinity + 1e-3 * pop.score(batch).double()
            if self.use_query:
                score = score + 10 * (batch.task[:, None] == 1) * bm25.score(batch)
            return score

    hist = evaluate(CategoryHistory(False), data, "test", progress=False)
    both = evaluate(CategoryHistory(True), data, "test", progress=False)
    popm = evaluate(pop, data, "test", progress=False)
    bm = evaluate(bm25, data, "test", progress=False)
    assert hist["rec"]["N@10"] > popm["rec"]["N@10"] + 0.1
    assert both["src"]["N@10"] > hist["src"]["N@10"] + 0.05
    assert both["src"]["N@10"] > bm["src"]["N@10"]


def test_full_ranking_masks_train_and_valid_items_at_test(tiny_data):
    from gensr.eval import evaluate_full

    # the user's train and valid items outscore the target: masked, the target is first
    model = SeenThenTarget(tiny_data, "test", ["train", "valid"])
    full = evaluate_full(model, tiny_data, "test", progress=False)
    assert set(full) == {"rec", "src"}
    for task in ("rec", "src"):
        assert full[task]["R@1"] == pytest.approx(1.0)
        assert full[task]["n"] == tiny_data.candidates("test").filter(
            pl.col("task") == task).height


def test_full_ranking_at_valid_masks_train_only(tiny_data):
    from gensr.eval import evaluate_full

    # at valid the user's test items are the future: not masked, they outrank the target
    model = SeenThenTarget(tiny_data, "valid", ["test"])
    full = evaluate_full(model, tiny_data, "valid", progress=False)
    assert full["rec"]["R@1"] < 0.8
    model = SeenThenTarget(tiny_data, "valid", ["train"])
    assert evaluate_full(model, tiny_data, "valid", progress=False)["rec"]["R@1"] == (
        pytest.approx(1.0))


def test_seen_before_splits(tiny_data):
    from gensr.eval.protocol import seen_before

    inter = tiny_data.interactions
    users, items = seen_before(tiny_data, "test")
    assert len(users) == inter.filter(pl.col("split") != "test").height
    assert np.all(np.diff(users) >= 0)
    assert len(seen_before(tiny_data, "valid")[0]) == tiny_data.train().height


def test_training_negatives_exclude_training_items_only(tiny_data):
    sampler = TrainSampler(tiny_data, n_negatives=40, seed=3)
    inter = tiny_data.interactions
    by_split = {s: set(zip(*inter.filter(pl.col("split") == s).select("user_id", "item_id")
                            .to_numpy().T.tolist())) for s in ("train", "valid", "test")}
    future = (by_split["valid"] | by_split["test"]) - by_split["train"]
    drawn_future = 0
    for epoch in range(2):
        table, _ = sampler.epoch(epoch)
        neg = table.candidates[:, 1:]
        pairs = set(zip(np.repeat(table.user, neg.shape[1]).tolist(), neg.ravel().tolist()))
        assert not pairs & by_split["train"]  # never a training item of the user
        drawn_future += len(pairs & future)
    # the user's valid/test items are future knowledge: they stay eligible as negatives
    assert drawn_future > 0
