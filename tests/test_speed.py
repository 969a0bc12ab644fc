"""GenSR's speed levers (docs/speed.md): each computes what the original path computes.

CPU: the fused T5 pass equals the model's own forward (logits and gradients), the fast-path
settings score like the original path, bf16 weights stay close, the benchmark's reference
way (history per candidate + one-token ``generate``) equals gensr's fp32 path, and the
benchmark's ``--tiny`` run writes its JSON. CUDA (skipped without): the same checks on the
GPU's kernels, and the bf16 fast path against fp32.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gensr.data.batching import eval_instances
from gensr.errors import ConfigError
from gensr.models.gensr import GenSR, GenSRConfig
from gensr.models.gensr.backbone import scratch_t5
from gensr.models.gensr.fused_t5 import FusedT5
from gensr.models.gensr.speed import Speed
from gensr.runs import prepare_inference, resolve_precision

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(backbone="scratch-t5", scratch_d_model=32, scratch_heads=2, scratch_d_ff=64,
             scratch_layers=2, scratch_decoder_layers=1, scratch_vocab_size=600,
             max_his_len=8, item_text_tokens=4)
# prompts of the four vectors (+ the query): scores spread across candidates, few near-ties
SHORT = dict(rec_template="{cf_history} {sem_history} {cf_candidate} {sem_candidate}",
             src_template="{cf_history} {sem_history} {cf_candidate} {sem_candidate} {query}")
FAST = Speed(runner="fused", bucket=8, pad_to=16, chunk=333)


def _model(data, seed=0, **overrides) -> GenSR:
    torch.manual_seed(seed)
    cf = torch.randn(data.n_items + 1, 16)
    cf[0] = 0
    return GenSR(GenSRConfig(**{**SMALL, **overrides}), data, cf_table=cf).eval()


def _batch(data, n=24, seed=0):
    table = eval_instances(data, "test", max_instances=n, seed=seed)
    batch = table.make_batch(data, np.arange(len(table)), 8)
    assert set(batch.task.tolist()) == {0, 1}  # rec and search prompts (two lengths)
    return batch


def _benchmark():
    spec = importlib.util.spec_from_file_location("throughput", ROOT / "benchmarks" /
                                                  "throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("throughput", module)
    spec.loader.exec_module(module)
    return module


def _t5(tied=False, dropout=0.0):
    if tied:
        from transformers import T5Config, T5ForConditionalGeneration

        return T5ForConditionalGeneration(T5Config(
            vocab_size=300, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
            dropout_rate=dropout, feed_forward_proj="relu", tie_word_embeddings=True,
            decoder_start_token_id=0))
    return scratch_t5(300, 0, 1, d_model=32, layers=3, decoder_layers=2, heads=4, d_ff=48,
                      dropout=dropout)


def _inputs(n=6, t=11, d=32):
    torch.manual_seed(1)
    x = torch.randn(n, t, d)
    mask = torch.ones(n, t, dtype=torch.bool)
    mask[2, 7:] = False
    mask[4, 9:] = False
    return x, mask


def _hf_logits(model, x, mask):
    start = torch.zeros(x.shape[0], 1, dtype=torch.long, device=x.device)
    return model(inputs_embeds=x, attention_mask=mask.long(), decoder_input_ids=start,
                 use_cache=False).logits[:, 0]


# --- the fused T5 pass ------------------------------------------------------------------------
@pytest.mark.parametrize("tied", [False, True])
def test_fused_t5_equals_the_models_forward(tied):
    torch.manual_seed(0)
    model = _t5(tied).eval()
    fused = FusedT5(model, 0)
    x, mask = _inputs()
    with torch.no_grad():
        ref = _hf_logits(model, x, mask)
        assert torch.allclose(fused.first_step_logits(x, mask), ref, atol=1e-5, rtol=0)
        same = mask[:1].expand_as(mask)  # every row with row 0's mask: the broadcast bias
        ref_same = _hf_logits(model, x, same)
        got = fused.first_step_logits(x, same, shared=True)
        assert torch.allclose(got, ref_same, atol=1e-5, rtol=0)
        partial = mask[2:3].expand_as(mask)  # a shared mask with padding
        got = fused.first_step_logits(x, partial, shared=True)
        assert torch.allclose(got, _hf_logits(model, x, partial), atol=1e-5, rtol=0)


def test_fused_t5_gradients_equal_the_models():
    torch.manual_seed(0)
    model = _t5(dropout=0.0).train()
    x, mask = _inputs()
    grads = []
    for fn in (lambda: _hf_logits(model, x, mask),
               lambda: FusedT5(model, 0).first_step_logits(x, mask)):
        model.zero_grad()
        fn()[:, :7].logsumexp(-1).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()
                      if p.grad is not None})
    assert grads[1].keys() <= grads[0].keys()
    for name, grad in grads[0].items():
        # the fused step never touches the decoder's self-attention q, k and position bias
        # (one position attends to itself); the model's forward gives them zero gradients
        other = grads[1].get(name, torch.zeros_like(grad))
        assert torch.allclose(grad, other, atol=1e-5, rtol=1e-4), name


def test_fused_t5_is_offered_only_for_t5(tiny_data):
    assert FusedT5.supports(_t5()) and not FusedT5.supports(torch.nn.Linear(2, 2))
    model = _model(tiny_data)
    assert model.fused_runner() is not None
    model.speed = Speed(runner="fused")
    assert model.resolved_speed().runner == "fused"


# --- the levers on CPU ------------------------------------------------------------------------
def test_speed_settings_resolve_and_validate():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    auto = Speed()
    assert auto.resolve(cpu, True) == Speed(runner="fused", bucket=2, chunk=256,
                                            dropout="fast")
    assert auto.resolve(cpu, False) == Speed(runner="hf", bucket=2, chunk=256,
                                             dropout="fast")
    assert auto.resolve(cuda, True) == Speed(runner="fused", bucket=8, chunk=4096,
                                             dropout="torch")
    assert Speed(chunk=512).resolve(cuda, True).chunk == 512  # set: kept
    assert auto.resolve(cuda, False).runner == "hf"
    assert Speed.plain().resolve(cpu, True).dropout == "torch"
    with pytest.raises(ConfigError, match="T5"):
        Speed(runner="fused").resolve(cpu, False)
    for bad in ({"runner": "x"}, {"compile": "x"}, {"chunk": 0},
                {"bucket": -1}, {"pad_to": 0}, {"dropout": "x"}):
        with pytest.raises(ConfigError):
            Speed(**bad)
    assert resolve_precision("auto", cpu) == "fp32"
    with pytest.raises(ConfigError, match="precision"):
        resolve_precision("fp8", cpu)


def test_fast_path_scores_equal_the_original_path_on_cpu(tiny_data):
    model = _model(tiny_data)
    batch = _batch(tiny_data)
    with torch.no_grad():
        model.speed = Speed.plain()
        ref = model.score(batch)
        model.speed = Speed()  # the CPU default
        assert torch.allclose(model.score(batch), ref, atol=1e-5, rtol=0)
        for speed in (FAST, Speed(runner="fused", chunk=7), Speed(runner="hf", bucket=1),
                      Speed(runner="fused", bucket=100, pad_to=8)):
            model.speed = speed
            assert torch.allclose(model.score(batch), ref, atol=1e-5, rtol=0), speed


def test_fast_path_trains_like_the_original_path(tiny_data):
    from gensr.data.batching import TrainSampler

    table, order = TrainSampler(tiny_data, 3, seed=1).epoch(0)
    batch = table.make_batch(tiny_data, order[:6], 8)
    losses = []
    for speed in (Speed.plain(), Speed(runner="fused")):
        model = _model(tiny_data, scratch_dropout=0.0, view_dropout=0.0).train()
        model.speed = speed
        loss = model.loss(batch).loss
        loss.backward()
        losses.append((float(loss.detach()), model.backbone.core.shared.weight.grad.clone()))
    assert abs(losses[0][0] - losses[1][0]) < 1e-6
    assert torch.allclose(losses[0][1], losses[1][1], atol=1e-6)


# --- fast dropout masks (Speed.dropout) ------------------------------------------------------
def test_fast_dropout_drops_p_and_scales_the_rest():
    from gensr.tensor import dropout

    x = torch.rand(200, 300) + 0.5  # no zeros of its own
    torch.manual_seed(3)
    y = dropout(x, 0.1, True)
    dropped = (y == 0).double().mean().item()
    assert abs(dropped - 0.1) < 5 * (0.1 * 0.9 / x.numel()) ** 0.5  # binomial, 5 sigma
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.9, rtol=1e-6, atol=0)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.1, True), y)  # torch's seed fixes the mask
    assert not torch.equal(dropout(x, 0.1, True), y)  # the next call draws another
    assert dropout(x, 0.1, False) is x and dropout(x, 0.0, True) is x
    assert (dropout(x, 0.5, True) == 0).double().mean().item() == pytest.approx(0.5, abs=0.01)
    half = dropout(x.to(torch.bfloat16), 0.3, True)
    assert half.dtype == torch.bfloat16
    assert (half == 0).double().mean().item() == pytest.approx(0.3, abs=0.01)
    # the gradient is the same mask, scaled
    leaf = x.clone().requires_grad_()
    out = dropout(leaf, 0.2, True)
    out.sum().backward()
    assert torch.equal(leaf.grad == 0, out == 0)
    assert torch.allclose(leaf.grad[out != 0], torch.full_like(leaf.grad[out != 0], 1.25))


def test_attention_written_out_equals_sdpa():
    from gensr.tensor import attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(5, 2, 7, 8) for _ in range(3))
    mask = torch.randn(1, 2, 7, 7)
    mask[..., -2:] = float("-inf")
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)
    with torch.no_grad():  # the CPU inference path: written out
        assert torch.allclose(attention(q, k, v, mask, scale=0.3), ref, atol=1e-5)
    # training with fast dropout: the written-out path, with gradients; p -> weights dropped
    leaf = q.clone().requires_grad_()
    torch.manual_seed(1)
    out = attention(leaf, k, v, mask, scale=0.3, p=0.5, fast_dropout=True)
    out.sum().backward()
    assert leaf.grad is not None and not torch.allclose(out, ref, atol=1e-3)
    torch.manual_seed(1)
    weights = torch.softmax(leaf.detach() @ k.transpose(-1, -2) * 0.3 + mask, dim=-1)
    from gensr.tensor import dropout
    assert torch.allclose(out, dropout(weights, 0.5, True) @ v, atol=1e-6)


def test_view_encoder_written_out_equals_nn_and_drops_fast():
    from gensr.models.gensr.views import _encoder, run_encoder

    torch.manual_seed(0)
    x = torch.randn(6, 9, 16)
    ignore = torch.zeros(6, 9, dtype=torch.bool)
    ignore[:, :4] = True
    ignore[0, :8] = True  # one row with a single visible key
    plain = _encoder(16, 2, 2, 0.0).train()
    assert torch.equal(run_encoder(plain, x, ignore, True),  # no dropout: nn's own forward
                       plain(x, src_key_padding_mask=ignore))
    written = _encoder(16, 2, 2, 0.3).train()
    for module in written.modules():  # the written-out layers, dropout rates 0 but one
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for layer in written.layers:
        layer.self_attn.dropout = 0.0
    written.layers[0].dropout2.p = 1e-12  # never drops (16 bits), but takes the written path
    assert torch.allclose(run_encoder(written, x, ignore, True),
                          written(x, src_key_padding_mask=ignore), atol=1e-5)
    dropped = _encoder(16, 2, 2, 0.3).train()
    torch.manual_seed(5)
    a = run_encoder(dropped, x, ignore, True)
    torch.manual_seed(5)
    assert torch.equal(run_encoder(dropped, x, ignore, True), a)  # seeded
    dropped.eval()
    assert not torch.allclose(a, dropped(x, src_key_padding_mask=ignore), atol=1e-3)
    assert torch.equal(run_encoder(dropped, x, ignore, True),  # eval: nn's own forward
                       dropped(x, src_key_padding_mask=ignore))


def test_fast_dropout_is_used_in_training_and_seeded(tiny_data, monkeypatch):
    import gensr.tensor as tensor_module
    from gensr.data.batching import TrainSampler

    table, order = TrainSampler(tiny_data, 3, seed=1).epoch(0)
    batch = table.make_batch(tiny_data, order[:6], 8)
    calls = []
    real = tensor_module.dropout

    def counting(x, p, training, fast=True):
        calls.append(fast)
        return real(x, p, training, fast)

    losses = {}
    for kind in ("fast", "torch", "fast"):
        model = _model(tiny_data).train()
        model.speed = Speed(dropout=kind)
        calls.clear()
        for module in ("gensr.tensor", "gensr.models.gensr.fused_t5", "gensr.models.gensr.views"):
            monkeypatch.setattr(f"{module}.dropout", counting)
        torch.manual_seed(7)
        losses.setdefault(kind, []).append(float(model.loss(batch).loss.detach()))
        fast_calls = sum(calls)  # views, T5 layers, attention weights
        assert fast_calls > 10 if kind == "fast" else fast_calls == 0
    assert losses["fast"][0] == losses["fast"][1]  # same seed, same masks
    assert losses["fast"][0] != losses["torch"][0]  # other masks than torch's


def test_bf16_weights_on_cpu(tiny_data):
    model = _model(tiny_data)
    batch = _batch(tiny_data)
    with torch.no_grad():
        ref = model.score(batch)
        assert model.set_precision("bf16") == "bf16" and model.precision == "bf16"
        assert model.cf_projection.weight.dtype == torch.float32  # views stay fp32
        model.speed = FAST
        got = model.score(batch)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    # P(Yes) within 1e-2 (docs/speed.md): the sigmoid of the log-odds scores
    assert float((torch.sigmoid(got) - torch.sigmoid(ref)).abs().max()) <= 1e-2
    assert model.set_precision("auto") == "fp32" and model.precision == "fp32"  # CPU


def test_prepare_inference(tiny_data):
    from gensr.models.registry import model_class

    model = _model(tiny_data)
    assert prepare_inference(model, "auto", fast_path=False) == "fp32"
    assert model.speed == Speed.plain()
    assert prepare_inference(model, "bf16") == "bf16" and model.speed == Speed()
    pop = model_class("pop")(model_class("pop").config_class(), tiny_data)
    assert prepare_inference(pop, "auto") == "fp32"
    with pytest.raises(ConfigError):
        prepare_inference(pop, "half")


# --- the benchmark ----------------------------------------------------------------------------
def test_reference_way_equals_gensr_fp32(tiny_data):
    """The benchmark compares equal work: per-candidate history + one-token generate gives
    the P(Yes) of gensr's history-reusing, one-decoder-step path."""
    bench = _benchmark()
    model = _model(tiny_data)
    batch = _batch(tiny_data, n=6)
    with torch.no_grad():
        model.speed = Speed.plain()
        ours = torch.sigmoid(model.score(batch))  # P(Yes) from the log-odds
    ref = bench.reference_scores(model, batch, chunk=100)
    assert ref.shape == ours.shape
    assert torch.allclose(ref, ours, atol=1e-6, rtol=0)


def test_benchmark_tiny_run_writes_results(tiny_data_dir, tmp_path):
    bench = _benchmark()
    out = tmp_path / "bench.json"
    bench.main(["--tiny", "--device", "cpu", "--data", str(tiny_data_dir), "--out", str(out),
                "--candidates", "20", "--instances", "2", "--agree-instances", "4",
                "--train-batch", "8", "--history", "8", "--prompt-tokens", "30"])
    result = json.loads(out.read_text())
    assert out.with_suffix(".md").exists()
    for key in ("device", "device_name", "model", "inputs", "flops_formula", "scoring",
                "training", "agreement_spread", "machine"):
        assert key in result
    assert result["tiny"] and result["gpu"] is None and result["peak_bf16_tflops"] is None
    assert result["inputs"]["prompt_text_tokens"] == 30
    rows = result["scoring"]
    assert rows[0]["way"] == "reference" and "agreement" not in rows[0]
    for row in rows:
        assert row["candidates_per_s"] > 0 and row["mfu"] is None
    for row in rows[1:]:
        a = row["agreement"]
        assert {"max_abs_dp", "mean_abs_dp", "top10_identical_share", "top1_identical_share",
                "instances"} <= a.keys() and a["instances"] == 4
    fp32 = rows[1]["agreement"]
    assert fp32["max_abs_dp"] < 1e-6 and fp32["top10_identical_share"] == 1.0
    assert any(r["precision"] == "bf16" for r in rows)
    assert rows[-1]["lever"].startswith("gensr default")
    assert [r["way"] for r in result["training"][:2]] == ["reference", "gensr"]
    assert all(r["examples_per_s"] > 0 for r in result["training"])


def test_benchmark_refuses_cpu_runs_without_out():
    bench = _benchmark()
    with pytest.raises(SystemExit):
        bench.parse_args(["--tiny", "--device", "cpu"])
    assert bench.default_out("NVIDIA H100 80GB HBM3").name == "throughput_h100.json"
    assert bench.default_out("NVIDIA A100-SXM4-80GB").name == "throughput_a100_sxm4_80gb.json"
    assert bench.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4


# --- CUDA -------------------------------------------------------------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@cuda
def test_cuda_fused_pass_equals_the_models_forward():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    model = _t5().eval().cuda()
    fused = FusedT5(model, 0)
    x, mask = (t.cuda() for t in _inputs())
    with torch.no_grad():
        ref = _hf_logits(model, x, mask)
        assert torch.allclose(fused.first_step_logits(x, mask), ref, atol=1e-4, rtol=0)
        same = mask[:1].expand_as(mask)
        got = fused.first_step_logits(x, same, shared=True)
        assert torch.allclose(got, _hf_logits(model, x, same), atol=1e-4, rtol=0)


@pytest.mark.cuda
@cuda
def test_cuda_bf16_fast_path_agrees_with_fp32(tiny_data):
    """The fast path (bf16 weights, fused pass, buckets) against the fp32 original path on
    a small GenSR: |ΔP(Yes)| <= 1e-2 (the issue's bound). The fp32 fused pass must keep the
    top-10 order on >= 99% of instances. bf16's top-10 order is not asserted: random
    weights leave near-tied candidates that any bf16 rounding reorders (CPU bf16 keeps the
    top-10 order of 0-40% of instances of such models); see docs/speed.md."""
    torch.backends.cuda.matmul.allow_tf32 = False
    bench = _benchmark()
    model = _model(tiny_data, **SHORT).cuda()
    table = eval_instances(tiny_data, "test", max_instances=128, seed=0)
    batches = [b.to("cuda") for b in table.batches(tiny_data, 32, 8)]

    def scores(precision: str, speed: Speed) -> np.ndarray:
        model.set_precision(precision)
        model.speed = speed
        with torch.inference_mode():
            return np.concatenate([model.score(b).float().cpu().numpy() for b in batches])

    ref = scores("fp32", Speed.plain())
    fused32 = bench.agreement(scores("fp32", FAST), ref)
    assert fused32["max_abs_dp"] < 1e-5 and fused32["top10_identical_share"] >= 0.99, fused32
    fast16 = scores("bf16", Speed())  # the CUDA default
    assert model.resolved_speed().runner == "fused" and model.precision == "bf16"
    fast = bench.agreement(fast16, ref)
    assert fast["max_abs_dp"] <= 1e-2, fast
    assert fast["top1_identical_share"] >= 0.9, fast
    plain16 = scores("bf16", Speed.plain())  # the same bf16 weights, the model's own forward
    rel = np.abs(fast16 - plain16) / np.maximum(plain16, 1e-12)
    assert rel.max() <= 0.1, rel.max()  # the fused kernels add no error beyond bf16's own


def test_retired_score_chunk_is_read_and_dropped(tiny_data):
    """Runs and configs of earlier versions set model.score_chunk: they still load."""
    from gensr.config import update_config
    from gensr.models.gensr import GenSRConfig

    config = update_config(GenSRConfig(), {"score_chunk": 2048, "max_his_len": 7})
    assert config.max_his_len == 7 and not hasattr(config, "score_chunk")
    with pytest.raises(ConfigError, match="unknown setting"):
        update_config(GenSRConfig(), {"score_chunks": 2048})
