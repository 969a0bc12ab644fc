"""GenSR through the shared trainer: a tiny run learns, and a run killed mid-epoch resumes
to the same result."""

import json

import pytest
import torch
from safetensors.torch import load_file

from gensr.data import load_data
from gensr.eval import evaluate
from gensr.runs import load_run
from gensr.train.run import train_run

TINY = ["backbone=scratch-t5", "scratch_d_model=32", "scratch_heads=2", "scratch_d_ff=64",
        "scratch_layers=1", "scratch_decoder_layers=1", "scratch_vocab_size=600",
        "max_his_len=8", "item_text_tokens=4",
        "rec_template=u {cf_history} {sem_history} c {cf_candidate} {sem_candidate}",
        "src_template=q {query} u {cf_history} {sem_history} c {cf_candidate} {sem_candidate}",
        "train.batch_size=32", "train.lr=3e-3", "train.warmup_steps=5", "train.patience=0",
        "train.eval_batch_size=20", "train.progress=false"]


def _quiet(_: str) -> None:
    pass


def _train(out, data_dir, cf, *extra):
    return train_run(out, "gensr", data_dir, sets=[*TINY, *extra], cf_path=cf, log=_quiet)


def test_tiny_gensr_run_learns(tmp_path, tiny_data_dir, tiny_cf_path):
    info = _train(tmp_path / "run", tiny_data_dir, tiny_cf_path, "train.max_steps=300",
                  "train.eval_every=150", "train.eval_max_instances=300")
    losses = [h["train_loss"] for h in info.history]
    assert losses[-1] < losses[0]
    data = load_data(tiny_data_dir)
    model, _ = load_run(tmp_path / "run", data)
    test = evaluate(model, data, "test", progress=False, batch_size=20)
    for task in ("rec", "src"):
        assert test[task]["R@10"] > 0.2, test  # random is 0.10 (300 steps: rec 0.31, src 0.48)


def test_gensr_resume_mid_epoch_is_exact(tmp_path, tiny_data_dir, tiny_cf_path):
    extra = ["train.max_steps=14", "train.eval_every=6"]
    full = _train(tmp_path / "full", tiny_data_dir, tiny_cf_path, *extra)
    assert 5 % full.steps_per_epoch != 0
    train_run(tmp_path / "cut", "gensr", tiny_data_dir, sets=[*TINY, *extra],
              cf_path=tiny_cf_path, log=_quiet, stop_after_steps=5)
    state = json.loads((tmp_path / "cut" / "last" / "state.json").read_text())
    assert state["step"] == 5
    resumed = train_run(tmp_path / "cut", resume=True, log=_quiet)
    assert resumed.status == "finished" and resumed.steps == 14
    for a, b in zip(full.history, resumed.history, strict=True):
        assert a["value"] == pytest.approx(b["value"], abs=1e-6)
    wa = load_file(str(tmp_path / "full" / "model.safetensors"))
    wb = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
