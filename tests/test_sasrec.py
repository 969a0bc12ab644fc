"""SASRec: the interface (shapes, full ranking, padding, persistence) and that it learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gensr.data.batching import TrainSampler, eval_instances
from gensr.eval.protocol import evaluate
from gensr.models import model_class
from gensr.models.baselines.sasrec import SASRec, SASRecConfig
from gensr.train import TrainConfig, fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(data, **kw) -> SASRec:
    torch.manual_seed(0)
    return SASRec(SASRecConfig(hidden=16, n_heads=2, n_layers=2, **kw), data).eval()


def _eval_batch(data, n=16, max_his_len=50):
    table = eval_instances(data, "valid", tasks=("rec",))
    return table.make_batch(data, np.arange(n), max_his_len)


def test_registered_and_rec_only(tiny_data):
    assert model_class("sasrec") is SASRec
    assert SASRec.tasks == ("rec",) and SASRec.trainable


def test_score_shapes_and_full_ranking_agree(tiny_data):
    model = _model(tiny_data)
    batch = _eval_batch(tiny_data)
    with torch.no_grad():
        scores = model.score(batch)
        everything = model.score_all(batch)
    assert scores.shape == batch.candidates.shape
    assert everything.shape == (len(batch), tiny_data.n_items + 1)
    torch.testing.assert_close(everything.gather(1, batch.candidates), scores)


def test_padding_does_not_change_scores(tiny_data):
    """A row's score is the same alone, in a batch, and with more left padding."""
    model = _model(tiny_data, behaviour_embedding=True)
    batch = _eval_batch(tiny_data, n=64, max_his_len=50)
    with torch.no_grad():
        together = model.score(batch)
        for i in (0, 5):
            alone = model.score(batch.select(torch.tensor([i])))
            torch.testing.assert_close(alone[0], together[i], rtol=1e-5, atol=1e-5)
        # a narrower window changes nothing for rows whose history fits in it
        narrow = _eval_batch(tiny_data, n=64, max_his_len=12)
        fits = (batch.hist_item[:, :-12] == 0).all(1)
        assert fits.any()
        torch.testing.assert_close(model.score(narrow)[fits], together[fits],
                                   rtol=1e-5, atol=1e-5)


def test_empty_history_is_finite(tiny_data):
    model = _model(tiny_data)
    batch = _eval_batch(tiny_data, n=4)
    batch.hist_item.zero_()
    batch.hist_behaviour.zero_()
    with torch.no_grad():
        assert torch.isfinite(model.score(batch)).all()


def test_loss_uses_labels_and_backpropagates(tiny_data):
    model = _model(tiny_data).train()
    table, order = TrainSampler(tiny_data, 3, seed=0).epoch(0)
    batch = table.make_batch(tiny_data, order[:32], model.config.max_his_len)
    out = model.loss(batch)
    assert out.loss.ndim == 0 and set(out.logs) == {"loss_pos", "loss_neg"}
    out.loss.backward()
    assert model.item_emb.weight.grad is not None
    assert float(model.item_emb.weight.grad.abs().sum()) > 0


def test_save_and_load_round_trip(tmp_path, tiny_data):
    model = _model(tiny_data, dropout=0.1)
    model.save_pretrained(tmp_path)
    again = SASRec.from_pretrained(tmp_path, tiny_data).eval()
    assert again.config == model.config
    batch = _eval_batch(tiny_data)
    with torch.no_grad():
        torch.testing.assert_close(again.score(batch), model.score(batch))


def test_trains_and_beats_random(tmp_path, tiny_data):
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(hidden=32, n_layers=1, max_his_len=20), tiny_data)
    config = TrainConfig(max_steps=300, batch_size=64, lr=3e-3, warmup_steps=20,
                         eval_every=100, metric="rec/N@10", patience=0, progress=False)
    fit(model, tiny_data, config, tmp_path / "run", log=lambda _: None)
    best = SASRec.from_pretrained(tmp_path / "run", tiny_data)
    test = evaluate(best, tiny_data, "test", progress=False)
    assert set(test) == {"rec"}
    # random ranking of 100 candidates: R@10 = 0.10, N@10 ~= 0.045
    assert test["rec"]["R@10"] > 0.35 and test["rec"]["N@10"] > 0.2, test["rec"]
