"""The three bugs of the verdict issue, each pinned by a test that failed before its fix:

1. a seeded ``--max-instances`` subset is drawn from both tasks before a model keeps its own,
   so single-task and two-task models are scored on the same instances;
2. ties at the retriever's N-th score count as in full ranking (expected over a random order
   of the tied items), not by item id;
3. GenSR ranks by the log-odds of "Yes", which does not saturate where P(Yes) rounds to 1.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from gensr.data.batching import eval_instances
from gensr.eval.protocol import evaluate, evaluate_full, full_instances
from gensr.eval.rerank import evaluate_rerank
from gensr.models.base import ModelConfig, SRModel
from gensr.retrieve.base import top_n
from gensr.retrieve.retrievers import ScoringRetriever

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- 1: one seeded subset for every model ---------------------------------------------------
class _ByItem(SRModel):
    """A fixed scorer (item id) serving the tasks it is given."""

    name = "by-item"
    trainable = False

    def __init__(self, data, tasks):
        super().__init__(ModelConfig(), data)
        self.tasks = tuple(tasks)

    def score(self, batch):
        return batch.candidates.float()


@pytest.mark.parametrize("n", [40, 150])
def test_subset_is_drawn_from_both_tasks_then_restricted(tiny_data, n):
    both = eval_instances(tiny_data, "test", max_instances=n, seed=5)
    for task, code in (("rec", 0), ("src", 1)):
        alone = eval_instances(tiny_data, "test", tasks=(task,), max_instances=n, seed=5)
        assert alone.instance_id.tolist() == both.instance_id[both.task == code].tolist()
        table, _ = full_instances(tiny_data, "test", (task,), n, 5)
        assert table.instance_id.tolist() == alone.instance_id.tolist()
    assert len(both) == n


def test_evaluate_scores_the_same_instances_for_every_model(tiny_data, tmp_path):
    files = {}
    for name, tasks in (("rec", ("rec",)), ("src", ("src",)), ("both", ("rec", "src"))):
        files[name] = tmp_path / f"{name}.parquet"
        evaluate(_ByItem(tiny_data, tasks), tiny_data, "test", max_instances=70, seed=2,
                 progress=False, scores_out=files[name])
    both = pl.read_parquet(files["both"])
    for task in ("rec", "src"):
        alone = pl.read_parquet(files[task])
        assert alone["instance_id"].to_list() == \
            both.filter(pl.col("task") == task)["instance_id"].to_list()


def test_rerank_scores_the_same_instances_for_every_retriever(tiny_data, tmp_path):
    frames = {}
    for name, tasks in (("rec", ("rec",)), ("both", ("rec", "src"))):
        out = tmp_path / f"{name}.parquet"
        retriever = ScoringRetriever(name, _ByItemAll(tiny_data, tasks))
        evaluate_rerank(None, retriever, tiny_data, "test", n=5, progress=False,
                        max_instances=70, seed=4, rankings_out=out)
        frames[name] = pl.read_parquet(out)
    assert frames["rec"]["instance_id"].to_list() == \
        frames["both"].filter(pl.col("task") == "rec")["instance_id"].to_list()


# --- 2: ties at the cut-off -----------------------------------------------------------------
class _ByItemAll(_ByItem):
    def score_all(self, batch):
        return torch.arange(self.n_items + 1, dtype=torch.float)[None].expand(
            len(batch), -1).clone()


class _Coarse(SRModel):
    """A full-ranking scorer with many ties: a few score levels per user."""

    name = "coarse"
    trainable = False

    def __init__(self, data, levels=3):
        super().__init__(ModelConfig(), data)
        self.levels = levels

    def score_all(self, batch):
        items = torch.arange(self.n_items + 1)[None]
        return ((items * 7 + batch.user[:, None] * 3) % self.levels).float()

    def score(self, batch):
        return self.score_all(batch).gather(1, batch.candidates)


def test_ten_tied_items_cut_at_three_give_the_full_ranking_recall():
    scores = torch.zeros(1, 11)  # items 1..10 tied
    got = top_n(scores, 3)
    assert got.items.tolist() == [[1, 2, 3]]
    # every item of the tied group, retrieved or cut, has the same chance of the top 3
    from gensr.eval.rerank import cutoff_metrics

    for target in (2, 9):
        m = cutoff_metrics(got, torch.tensor([target]), ks=(1, 3))
        assert float(m["R@3"][0]) == pytest.approx(0.3)
        assert float(m["R@1"][0]) == pytest.approx(0.1)


@pytest.mark.parametrize("levels", [2, 5])
def test_retriever_alone_with_ties_equals_full_ranking(tiny_data, levels):
    model = _Coarse(tiny_data, levels)
    retriever = ScoringRetriever("coarse", model)
    res = evaluate_rerank(None, retriever, tiny_data, "test", n=20, progress=False,
                          max_instances=150, seed=1)
    full = evaluate_full(model, tiny_data, "test", progress=False, max_instances=150, seed=1)
    for task in ("rec", "src"):
        for k in (1, 5, 10, 20):
            for m in ("R", "N"):
                assert res.retriever[task][f"{m}@{k}"] == pytest.approx(
                    full[task][f"{m}@{k}"], abs=1e-9), (task, m, k)
    # reranking by the scorer that retrieved changes nothing at K <= N
    again = evaluate_rerank(model, retriever, tiny_data, "test", n=20, progress=False,
                            max_instances=150, seed=1)
    for task in ("rec", "src"):
        for name, value in res.retriever[task].items():
            assert again.rerank[task][name] == pytest.approx(value, abs=1e-9), (task, name)


# --- 3: the log-odds score ------------------------------------------------------------------
def _gensr(data):
    from gensr.models.gensr import GenSR, GenSRConfig

    torch.manual_seed(0)
    cf = torch.randn(data.n_items + 1, 16)
    cf[0] = 0
    config = GenSRConfig(backbone="scratch-t5", scratch_d_model=32, scratch_heads=2,
                         scratch_d_ff=64, scratch_layers=1, scratch_decoder_layers=1,
                         scratch_vocab_size=600, max_his_len=8, item_text_tokens=4)
    return GenSR(config, data, cf_table=cf).eval()


def test_confident_candidates_do_not_tie(tiny_data):
    model = _gensr(tiny_data)
    yes = model.backbone.yes_id
    head = model.backbone.core.get_output_embeddings()

    def confident(module, args, out):  # "Yes" leads every other token by about 60 nats
        out = out.clone()
        out[..., yes] = out[..., yes] + 60.0
        return out

    lift = head.register_forward_hook(confident)
    table = eval_instances(tiny_data, "test", max_instances=8, seed=0)
    batch = table.make_batch(tiny_data, np.arange(len(table)), 8)
    with torch.no_grad():
        scores = model.score(batch)
    p_yes = torch.sigmoid(scores.double())
    assert bool((p_yes.float() == 1.0).all())  # as probabilities every candidate ties ...
    # ... while the log-odds keep them apart
    assert all(len(torch.unique(row)) > 90 for row in scores)
    logits = None

    def grab(module, args, out):
        nonlocal logits
        logits = out

    handle = head.register_forward_hook(grab)
    with torch.no_grad():
        model.score(batch.select(torch.arange(1)))
    handle.remove()
    lift.remove()
    # log-odds = l_yes - logsumexp(others): exact, unbounded
    lo = logits.double()
    rest = torch.cat([lo[:, :yes], lo[:, yes + 1:]], 1)
    expected = lo[:, yes] - torch.logsumexp(rest, 1)
    assert torch.allclose(scores[0].double(), expected.view(-1), rtol=1e-5, atol=1e-4)


def test_bf16_backbone_keeps_the_lm_head_in_fp32(tiny_data):
    model = _gensr(tiny_data)
    table = eval_instances(tiny_data, "test", max_instances=4, seed=0)
    batch = table.make_batch(tiny_data, np.arange(len(table)), 8)
    with torch.no_grad():
        fp32 = model.score(batch)
    assert model.set_precision("bf16") == "bf16"
    head = model.backbone.core.get_output_embeddings()
    assert head.weight.dtype == torch.float32
    assert model.backbone.core.get_input_embeddings().weight.dtype == torch.bfloat16
    seen = []
    handle = head.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    with torch.no_grad():
        bf16 = model.score(batch)
    handle.remove()
    assert seen and set(seen) == {torch.float32}
    assert bf16.dtype == torch.float32
    assert torch.allclose(bf16, fp32, atol=0.2)
    # fewer ties than bf16 logits would leave: nearly every candidate scored apart
    assert np.mean([len(torch.unique(r)) for r in bf16]) > 90
