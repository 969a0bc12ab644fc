"""The long-history levers of GenSR: the user's CF vector in the prompt, the listwise loss,
and (in test_hard_sources.py) CF-mined training negatives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gensr.data.batching import TrainSampler, eval_instances
from gensr.errors import ConfigError
from gensr.models.gensr import GenSR, GenSRConfig
from gensr.models.gensr.prompt import ALL_VECTOR_SLOTS, USER_SLOT, PromptBuilder, PromptTemplate

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SMALL = dict(backbone="scratch-t5", scratch_d_model=32, scratch_heads=2, scratch_d_ff=64,
             scratch_layers=1, scratch_decoder_layers=1, scratch_vocab_size=600,
             max_his_len=8, item_text_tokens=4)


def _model(data, **overrides) -> GenSR:
    torch.manual_seed(0)
    cf = torch.randn(data.n_items + 1, 16)
    cf[0] = 0
    users = torch.randn(data.n_users + 1, 16)
    users[0] = 0
    return GenSR(GenSRConfig(**{**SMALL, **overrides}), data, cf_table=cf, cf_users=users)


def _batch(data, n=4):
    table = eval_instances(data, "test", max_instances=n, seed=0)
    return table.make_batch(data, np.arange(len(table)), 8)


def test_user_slot_is_parsed_before_cf_history_and_only_with_the_lever():
    t = PromptTemplate.parse("a {cf_history} b {sem_history} c {cf_candidate} {sem_candidate}",
                             plural="x", singular="x", needs_query=False, user_vector=True)
    kinds = [v for k, v in t.pieces if k == "vector"]
    assert kinds == [USER_SLOT, "cf_history", "sem_history", "cf_candidate", "sem_candidate"]
    with pytest.raises(ConfigError, match="cf_user"):
        PromptTemplate.parse("{cf_user} {cf_history} {sem_history} {cf_candidate} "
                             "{sem_candidate}", plural="x", singular="x", needs_query=False)


def test_the_users_cf_vector_reaches_the_prompt(tiny_data):
    model = _model(tiny_data, user_vector=True).eval()
    batch = _batch(tiny_data)
    enc = model.encode_history(batch)
    assert torch.equal(enc.user, model.cf_users[batch.user])
    vectors = model.slot_vectors(enc, batch.candidates)
    assert vectors[USER_SLOT].shape == vectors["cf_history"].shape
    embeds, mask = model.prompt_embeddings(enc, vectors)
    marker = PromptBuilder.slot_marker(ALL_VECTOR_SLOTS.index(USER_SLOT))
    at = (enc.prompt_ids == marker).int().argmax(dim=1)  # the slot's position per instance
    assert (enc.prompt_ids == marker).sum(1).eq(1).all()
    c = batch.candidates.shape[1]
    spliced = embeds.view(len(batch), c, *embeds.shape[1:])[torch.arange(len(batch)), 0, at]
    expected = model.cf_projection(model.cf_users[batch.user])
    assert torch.allclose(spliced, expected, atol=1e-6)
    # the user changes the score; without the lever the prompt has no such slot
    with torch.no_grad():
        before = model.score(batch)
        model.cf_users[batch.user] += 3.0
        assert not torch.allclose(model.score(batch), before)
    plain = _model(tiny_data).eval()
    assert not (plain.encode_history(batch).prompt_ids == marker).any()


def test_a_request_without_a_user_gets_its_historys_mean(tiny_data):
    model = _model(tiny_data, user_vector=True).eval()
    batch = _batch(tiny_data)
    anonymous = batch.select(torch.arange(len(batch)))
    anonymous.user = torch.zeros_like(batch.user)
    enc = model.encode_history(anonymous)
    items = model.cf_view.item_vectors(batch.hist_item)
    mask = (batch.hist_item > 0).unsqueeze(-1).float()
    assert torch.allclose(enc.user, (items * mask).sum(1) / mask.sum(1).clamp(min=1))


def test_listwise_loss_is_added_and_trains(tiny_data):
    table, order = TrainSampler(tiny_data, 3, seed=1).epoch(0)
    batch = table.make_batch(tiny_data, order[:8], 8)
    plain = _model(tiny_data).train()
    listwise = _model(tiny_data, listwise_weight=0.5).train()
    torch.manual_seed(3)
    a = plain.loss(batch)
    torch.manual_seed(3)
    b = listwise.loss(batch)
    assert "loss_list" in b.logs and "loss_list" not in a.logs
    assert b.loss.item() == pytest.approx(a.loss.item() + 0.5 * b.logs["loss_list"], rel=1e-5)
    # the listwise term is the softmax cross-entropy of the positive (column 0) over the
    # log-odds the model scores with
    listwise.eval()
    with torch.no_grad():
        odds = listwise.score(batch)
        manual = torch.nn.functional.cross_entropy(odds, torch.zeros(len(batch),
                                                                     dtype=torch.long))
        out = listwise.loss(batch)
    assert out.logs["loss_list"] == pytest.approx(float(manual), rel=1e-4)
    b.loss.backward()
    assert listwise.cf_projection.weight.grad is not None


def test_fusion_of_retriever_and_reranker_scores(tiny_data, tiny_cf_path):
    from gensr.eval.rerank import choose_fusion_weight, evaluate_rerank, fuse_scores
    from gensr.models.base import ModelConfig, SRModel
    from gensr.retrieve import build_retriever

    class Reverse(SRModel):  # ranks the retrieved items in reverse
        name = "reverse"
        trainable = False

        def score(self, batch):
            return torch.arange(batch.candidates.shape[1], dtype=torch.float)[None].expand(
                len(batch), -1).clone()

    s = torch.tensor([[3.0, 1.0, 2.0, float("-inf")]])
    r = torch.tensor([[10.0, 30.0, 20.0, float("-inf")]])
    assert torch.equal(fuse_scores(s, r, 0.0).argsort(descending=True)[0, :3],
                       torch.tensor([0, 2, 1]))
    assert torch.equal(fuse_scores(s, r, 100.0).argsort(descending=True)[0, :3],
                       torch.tensor([1, 2, 0]))
    assert fuse_scores(s, r, 1.0)[0, 3] == float("-inf")
    retriever = build_retriever(f"lightgcn={tiny_cf_path}", tiny_data, device="cpu")
    res = evaluate_rerank(Reverse(ModelConfig(), tiny_data), retriever, tiny_data, "test",
                          n=20, progress=False, fuse=(0.0, 1000.0))
    for name, value in res.retriever["rec"].items():  # fused by a huge weight: the retrieval
        assert res.fused[1000.0]["rec"][name] == pytest.approx(value, abs=1e-9)
    for name, value in res.rerank["rec"].items():  # weight 0: the reranker's order
        assert res.fused[0.0]["rec"][name] == pytest.approx(value, abs=1e-9)
    assert choose_fusion_weight(res) == 1000.0  # reversing the retrieval hurts: trust it
