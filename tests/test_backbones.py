"""Backbone adapters: seq2seq (bert2bert, BART, T5) and decoder-only (Llama) behind one
interface, LoRA on/off, exact save → load, sources and fp16 export; the real pretrained
MiniLM bert2bert and SmolLM2 where their optional packages are installed."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import gensr.models.gensr.modeling as gensr_modeling
from gensr.config import load_yaml, update_config
from gensr.data.batching import TrainSampler, eval_instances
from gensr.errors import ConfigError, RunError
from gensr.models.gensr import GenSR, GenSRConfig
from gensr.models.gensr.backbone import (
    Backbone,
    CausalLMBackbone,
    Seq2SeqBackbone,
    tied_groups,
    train_wordpiece,
)
from gensr.models.gensr.backbones import NAMED_BACKBONES, resolve_source
from gensr.models.gensr.backbones import sources as backbone_sources
from gensr.models.gensr.backbones.export import export_backbone
from gensr.models.gensr.backbones.sources import EXPORT_MARKER, package_folder

ROOT = Path(__file__).resolve().parents[1]
HAS_PEFT = importlib.util.find_spec("peft") is not None
needs_peft = pytest.mark.skipif(not HAS_PEFT, reason="LoRA needs the optional package peft")
SMALL = dict(max_his_len=8, item_text_tokens=4, view_dropout=0.0)
KINDS = ("bert2bert", "llama", "bart")


# --- tiny pretrained-style models, saved the way a hub model is --------------------------------
def _tokenizer(data):
    texts = list(data.item_text[1:]) + list(data.query_text[1:])
    texts += [GenSRConfig().rec_template, GenSRConfig().src_template] * 5
    tok = train_wordpiece(texts, 800, extra_words=["yes", "no"])
    tok.add_special_tokens({"cls_token": "[CLS]", "sep_token": "[SEP]", "bos_token": "<s>"})
    return tok


@pytest.fixture(scope="module")
def tiny_dirs(tiny_data, tmp_path_factory) -> dict[str, Path]:
    """A 2-layer BERT encoder (for bert2bert:), a tiny Llama causal LM and a tiny BART, each a
    directory with config, safetensors and tokenizer."""
    from transformers import (
        BartConfig,
        BartForConditionalGeneration,
        BertConfig,
        BertModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    tok = _tokenizer(tiny_data)
    vocab = len(tok)
    root = tmp_path_factory.mktemp("backbones")
    torch.manual_seed(0)
    models = {
        "bert2bert": BertModel(BertConfig(
            vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=256,
            pad_token_id=tok.pad_token_id)),
        "llama": LlamaForCausalLM(LlamaConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)),
        "bart": BartForConditionalGeneration(BartConfig(
            vocab_size=vocab, d_model=32, encoder_layers=1, decoder_layers=1,
            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
            decoder_ffn_dim=64, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
            decoder_start_token_id=tok.eos_token_id, forced_eos_token_id=None)),
    }
    dirs = {}
    for kind, model in models.items():
        model.save_pretrained(root / kind)
        tok.save_pretrained(root / kind)
        dirs[kind] = root / kind
    return dirs


def _spec(kind: str, dirs: dict[str, Path]) -> str:
    return f"bert2bert:{dirs[kind]}" if kind == "bert2bert" else str(dirs[kind])


def _cf(data) -> torch.Tensor:
    cf = torch.randn(data.n_items + 1, 16, generator=torch.Generator().manual_seed(1))
    cf[0] = 0
    return cf


def _model(data, backbone: str, seed: int = 0, **overrides) -> GenSR:
    torch.manual_seed(seed)
    return GenSR(GenSRConfig(backbone=backbone, **{**SMALL, **overrides}), data,
                 cf_table=_cf(data))


def _train_batch(data, n=6, k=3):
    table, order = TrainSampler(data, k, seed=1).epoch(0)
    rec = order[table.task[order] == 0][: n // 2]
    src = order[table.task[order] == 1][: n - n // 2]
    return table.make_batch(data, np.concatenate([rec, src]), 8)


def _eval_batch(data, n=4, c=12):
    table = eval_instances(data, "test")
    tasks = table.task
    rows = np.concatenate([np.flatnonzero(tasks == 0)[: n // 2],
                           np.flatnonzero(tasks == 1)[: n // 2]])
    batch = table.make_batch(data, rows, 8)
    batch.candidates = batch.candidates[:, :c]
    return batch


def _reload(model: GenSR, directory: Path, data, monkeypatch) -> GenSR:
    """save_pretrained → from_pretrained (the CF table is injected: it is not in the run)."""
    model.save_pretrained(directory)
    monkeypatch.setattr(gensr_modeling, "load_cf_table", lambda config, d: _cf(d))
    return GenSR.from_pretrained(directory, data).eval()


def _grad_parts(model: GenSR) -> dict[str, torch.nn.Module]:
    return {"cf_view": model.cf_view.encoder, "semantic_view": model.semantic_view,
            "cf_filter": model.cf_filter, "sem_filter": model.sem_filter,
            "cf_projection": model.cf_projection, "backbone": model.backbone}


def _has_grad(part: torch.nn.Module) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0
               for p in part.parameters() if p.requires_grad)


# --- every adapter -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_adapter_kind_and_interface(kind, tiny_data, tiny_dirs):
    model = _model(tiny_data, _spec(kind, tiny_dirs))
    backbone = model.backbone
    assert isinstance(backbone, Backbone)
    assert isinstance(backbone, CausalLMBackbone if kind == "llama" else Seq2SeqBackbone)
    assert backbone.d_model == 32 and backbone.yes_id != backbone.no_id
    if kind == "llama":
        assert backbone.eos_id is None  # the answer follows the prompt directly
    if kind == "bert2bert":
        core = backbone.core
        assert type(core).__name__ == "EncoderDecoderModel"
        tok = backbone.tokenizer
        for cfg in (core.config, core.generation_config):
            assert cfg.decoder_start_token_id == tok.cls_token_id
            assert cfg.pad_token_id == tok.pad_token_id
        # both halves warm-started from the same encoder
        assert torch.equal(core.encoder.encoder.layer[0].attention.self.query.weight,
                           core.decoder.bert.encoder.layer[0].attention.self.query.weight)


@pytest.mark.parametrize("kind", KINDS)
def test_scores_are_the_log_odds_of_the_softmax(kind, tiny_data, tiny_dirs):
    model = _model(tiny_data, _spec(kind, tiny_dirs)).eval()
    batch = _eval_batch(tiny_data)
    with torch.no_grad():
        scores = model.score(batch)
        logits, _ = model.yes_no_logits(model.encode_history(batch), batch.candidates)
    p_yes = torch.softmax(logits.double(), dim=-1)[..., model.backbone.yes_id]
    assert scores.shape == batch.candidates.shape and torch.isfinite(scores).all()
    assert torch.allclose(scores.double(), torch.log(p_yes) - torch.log1p(-p_yes), atol=1e-4)
    assert torch.allclose(torch.sigmoid(scores.double()), p_yes, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_the_backbone_and_gensr_modules(kind, tiny_data, tiny_dirs):
    model = _model(tiny_data, _spec(kind, tiny_dirs))
    out = model.loss(_train_batch(tiny_data))
    assert torch.isfinite(out.loss) and "loss_cl" in out.logs
    out.loss.backward()
    for name, part in _grad_parts(model).items():
        assert _has_grad(part), name


@pytest.mark.parametrize("kind", KINDS)
def test_analysis_hooks(kind, tiny_data, tiny_dirs):
    model = _model(tiny_data, _spec(kind, tiny_dirs)).eval()
    batch = _eval_batch(tiny_data, n=2, c=3)
    with torch.no_grad():
        rep = model.representation(batch)
    assert rep.shape == (2, 3, 32) and torch.isfinite(rep).all()
    shared = model.shared_parameters()
    assert shared and all(isinstance(p, torch.nn.Parameter) for _, p in shared)
    assert all(any(k in n for k in ("self_attn.", "attention.self.")) for n, _ in shared)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lora", [0, 4])
def test_save_load_gives_identical_scores_offline(kind, lora, tiny_data, tiny_dirs, tmp_path,
                                                  monkeypatch):
    if lora and not HAS_PEFT:
        pytest.skip("LoRA needs the optional package peft")
    source = tmp_path / "source"
    shutil.copytree(tiny_dirs[kind], source)
    spec = f"bert2bert:{source}" if kind == "bert2bert" else str(source)
    model = _model(tiny_data, spec, lora_r=lora).eval()
    with torch.no_grad():  # train a step's worth of change so the reload cannot match by luck
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    batch = _eval_batch(tiny_data)
    with torch.no_grad():
        before = model.score(batch)
    shutil.rmtree(source)  # the run directory alone must be enough
    loaded = _reload(model, tmp_path / "run", tiny_data, monkeypatch)
    with torch.no_grad():
        after = loaded.score(batch)
    assert torch.equal(before, after)
    assert tied_groups(loaded.backbone.core) == tied_groups(model.backbone.core)
    assert loaded.backbone.lora_enabled == bool(lora)
    card = json.loads((tmp_path / "run" / "backbone" / "gensr_backbone.json").read_text())
    assert card["kind"] == ("causal" if kind == "llama" else "seq2seq")


@needs_peft
@pytest.mark.parametrize("kind", KINDS)
def test_lora_trains_only_adapters_and_gensr_modules(kind, tiny_data, tiny_dirs):
    model = _model(tiny_data, _spec(kind, tiny_dirs), lora_r=4, lora_alpha=8)
    backbone = model.backbone
    assert backbone.lora_enabled
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    fresh = backbone.fresh
    assert trainable and all("lora_" in n or any(f in n for f in fresh) for n in trainable)
    assert any("lora_" in n for n in trainable)
    assert not backbone.core.get_input_embeddings().weight.requires_grad
    if kind == "bert2bert":  # the randomly initialised cross-attention keeps training
        assert any("crossattention" in n and "lora_" not in n for n in trainable)
    model.loss(_train_batch(tiny_data)).loss.backward()
    for name, part in _grad_parts(model).items():
        assert _has_grad(part), name
    frozen = [p for n, p in backbone.named_parameters() if n not in trainable]
    assert frozen and all(p.grad is None for p in frozen)
    n_lora = sum(p.numel() for n, p in backbone.named_parameters() if "lora_" in n)
    assert 0 < n_lora < sum(p.numel() for p in backbone.parameters())


def test_lora_off_trains_the_whole_backbone(tiny_data, tiny_dirs):
    backbone = _model(tiny_data, _spec("llama", tiny_dirs)).backbone
    assert not backbone.lora_enabled
    assert all(p.requires_grad for p in backbone.parameters())


@needs_peft
def test_lora_on_scratch_t5_and_bad_settings(tiny_data):
    model = _model(tiny_data, "scratch-t5", lora_r=2, scratch_d_model=32, scratch_heads=2,
                   scratch_d_ff=64, scratch_layers=1, scratch_vocab_size=600)
    assert model.backbone.lora_enabled
    with pytest.raises(ConfigError, match="lora_r"):
        _model(tiny_data, "scratch-t5", lora_r=-1)
    with pytest.raises(ConfigError, match="lora_targets"):
        _model(tiny_data, "scratch-t5", lora_r=2, lora_targets=["no_such_module"],
               scratch_d_model=32, scratch_heads=2, scratch_vocab_size=600)


# --- the decoder-only adapter ------------------------------------------------------------------
def test_causal_logits_come_from_each_rows_last_real_token(tiny_data, tiny_dirs, monkeypatch):
    model = _model(tiny_data, _spec("llama", tiny_dirs)).eval()
    batch = _eval_batch(tiny_data, n=4, c=3)
    enc = model.encode_history(batch)
    embeds, mask = model.prompt_embeddings(enc, model.slot_vectors(enc, batch.candidates))
    lengths = mask.sum(1)
    assert len(set(lengths.tolist())) > 1  # rec and src prompts differ in length
    backbone = model.backbone
    with torch.no_grad():
        got = backbone.first_step_logits(embeds, mask)
        full = backbone.core(inputs_embeds=embeds, attention_mask=mask.long()).logits
        expected = full[torch.arange(len(mask)), lengths - 1]
        monkeypatch.setattr(CausalLMBackbone, "_base_and_head", lambda self: None)
        fallback = backbone.first_step_logits(embeds, mask)
        # each prompt alone, unpadded, gives the same next-token logits
        alone = torch.stack([backbone.core(inputs_embeds=embeds[i : i + 1, : lengths[i]]).logits[
            0, -1] for i in range(len(mask))])
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(fallback, expected, atol=1e-5)
    assert torch.allclose(got, alone, atol=1e-5)


def test_causal_rejects_left_padding(tiny_data, tiny_dirs):
    backbone = _model(tiny_data, _spec("llama", tiny_dirs)).backbone
    embeds = torch.randn(2, 5, 32)
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    with pytest.raises(RunError, match="right-padded"):
        backbone.first_step_logits(embeds, left)


def test_causal_pads_with_eos_when_the_tokenizer_has_no_pad(tiny_data, tiny_dirs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    tok.pad_token = None
    backbone = CausalLMBackbone(AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]), tok,
                                "Yes", "No")
    assert backbone.pad_id == tok.eos_token_id


# --- sources -----------------------------------------------------------------------------------
def test_source_forms_and_errors(tiny_dirs, tmp_path, monkeypatch):
    assert resolve_source(str(tiny_dirs["llama"])).recipe == "auto"
    b2b = resolve_source(f"bert2bert:{tiny_dirs['bert2bert']}")
    assert b2b.recipe == "bert2bert" and b2b.path == str(tiny_dirs["bert2bert"])
    with pytest.raises(ConfigError, match="bert2bert:"):
        resolve_source("bert2bert:")
    with pytest.raises(ConfigError, match="backbone_gguf_file"):
        resolve_source(f"bert2bert:{tiny_dirs['bert2bert']}", "x.gguf")
    with pytest.raises(RunError, match="not a directory"):
        resolve_source("some/hub-name", "model.gguf")
    with pytest.raises(RunError, match="does not exist"):
        resolve_source(str(tiny_dirs["llama"]), "model.gguf")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    direct = resolve_source(str(gguf))
    assert (direct.path, direct.gguf_file) == (str(tmp_path), "m.gguf")
    # named backbones whose package is absent: a clear error naming the extra
    monkeypatch.setattr(backbone_sources, "package_folder", lambda dist, module: None)
    for name, named in NAMED_BACKBONES.items():
        with pytest.raises(RunError, match=rf"{named.distribution}.*gensr\[backbones\]"):
            resolve_source(name)


def test_missing_optional_packages_name_the_extra(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` raises ImportError
    with pytest.raises(RunError, match=r"peft.*gensr\[backbones\]"):
        _model(tiny_data, "scratch-t5", lora_r=2, scratch_d_model=32, scratch_heads=2,
               scratch_vocab_size=600)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gguf" else real_find_spec(name, *a))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(RunError, match=r"gguf.*gensr\[backbones\]"):
        _model(tiny_data, str(gguf))


def test_encoder_only_checkpoint_asks_for_bert2bert(tiny_data, tiny_dirs):
    with pytest.raises(ConfigError, match="bert2bert:"):
        _model(tiny_data, str(tiny_dirs["bert2bert"]))


def test_missing_backbone_is_a_clear_error(tiny_data, tmp_path):
    with pytest.raises(RunError, match="could not load backbone"):
        _model(tiny_data, str(tmp_path / "nothing-here"))


def test_package_folder_does_not_import(monkeypatch):
    import sys

    assert package_folder("no-such-dist", "no_such_module_xyz") is None
    folder = package_folder("pytest", "pytest")  # any installed package
    assert folder is not None and (folder / "__init__.py").exists()
    assert "no_such_module_xyz" not in sys.modules


# --- export ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["bert2bert", "llama"])
def test_export_reloads_like_the_source(kind, tiny_data, tiny_dirs, tmp_path):
    spec = _spec(kind, tiny_dirs)
    same = export_backbone(spec, tmp_path / "fp32", dtype="fp32")
    half = export_backbone(spec, tmp_path / "fp16", dtype="fp16")
    assert half["bytes"] < same["bytes"]
    marker = json.loads((tmp_path / "fp16" / EXPORT_MARKER).read_text())
    assert marker["recipe"] == ("bert2bert" if kind == "bert2bert" else "auto")
    with safe_open(str(tmp_path / "fp16" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    batch = _eval_batch(tiny_data)
    with torch.no_grad():
        reference = _model(tiny_data, spec).eval().score(batch)
        exact = _model(tiny_data, str(tmp_path / "fp32")).eval().score(batch)
        half_model = _model(tiny_data, str(tmp_path / "fp16")).eval()
        close = half_model.score(batch)
    assert torch.equal(reference, exact)  # same weights, same seeded random parts
    assert torch.allclose(reference, close, rtol=0.05, atol=1e-6)
    assert next(half_model.backbone.parameters()).dtype == torch.float32  # trains in fp32
    with pytest.raises(RunError, match="not empty"):
        export_backbone(spec, tmp_path / "fp16")


def test_export_script(tiny_dirs, tmp_path, capsys):
    import runpy

    script = runpy.run_path(str(ROOT / "scripts" / "export_backbone.py"))
    assert script["main"]([str(tiny_dirs["llama"]), "--out", str(tmp_path / "e")]) == 0
    assert "exported as fp16" in capsys.readouterr().out
    assert script["main"](["scratch-t5", "--out", str(tmp_path / "x")]) == 2


# --- configs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gensr_minilm_h100.yaml", "gensr_smollm2_h100.yaml"])
def test_h100_configs_parse(name):
    doc = load_yaml(ROOT / "configs" / name)
    assert set(doc) == {"model", "train"}
    config = update_config(GenSRConfig(), doc["model"])
    assert config.backbone
    assert doc["train"]["precision"] == "bf16"


# --- the real pretrained backbones (optional packages) -----------------------------------------
def _named_or_skip(name: str) -> None:
    named = NAMED_BACKBONES[name]
    if package_folder(named.distribution, named.module) is None:
        pytest.skip(f"optional package {named.distribution} not installed")


@pytest.mark.slow
def test_real_minilm_bert2bert_scores_a_batch(tiny_data, tmp_path, monkeypatch):
    _named_or_skip("minilm-bert2bert")
    model = _model(tiny_data, "minilm-bert2bert").eval()
    core = model.backbone.core
    assert type(core).__name__ == "EncoderDecoderModel" and model.backbone.d_model == 384
    assert 45e6 < sum(p.numel() for p in core.parameters()) < 52e6
    batch = _eval_batch(tiny_data, n=2, c=4)
    with torch.no_grad():
        scores = model.score(batch)
    p_yes = torch.sigmoid(scores)  # scores are log-odds of "Yes"
    assert torch.isfinite(scores).all() and ((p_yes >= 0) & (p_yes <= 1)).all()
    out = model.loss(_train_batch(tiny_data, n=2, k=1))
    assert torch.isfinite(out.loss)
    with torch.no_grad():
        again = _reload(model, tmp_path / "run", tiny_data, monkeypatch).score(batch)
    assert torch.equal(scores, again)


@pytest.mark.slow
def test_real_smollm2_scores_a_batch(tiny_data):
    _named_or_skip("smollm2-135m")
    pytest.importorskip("gguf", reason="the gguf package reads SmolLM2's weights")
    model = _model(tiny_data, "smollm2-135m", answer_yes=" Yes", answer_no=" No").eval()
    assert isinstance(model.backbone, CausalLMBackbone) and model.backbone.d_model == 576
    batch = _eval_batch(tiny_data, n=2, c=2)
    with torch.no_grad():
        scores = model.score(batch)
    p_yes = torch.sigmoid(scores)  # scores are log-odds of "Yes"
    assert torch.isfinite(scores).all() and ((p_yes >= 0) & (p_yes <= 1)).all()


def test_a_run_without_its_backbone_card_is_refused(tiny_data, tmp_path, monkeypatch):
    """gensr_backbone.json (kind + tying) is part of every run: without it, one clear error."""
    model = _model(tiny_data, "scratch-t5", scratch_d_model=32, scratch_heads=2,
                   scratch_d_ff=64, scratch_layers=1, scratch_vocab_size=600).eval()
    run = tmp_path / "run"
    model.save_pretrained(run)
    (run / "backbone" / "gensr_backbone.json").unlink()
    monkeypatch.setattr(gensr_modeling, "load_cf_table", lambda config, d: _cf(d))
    with pytest.raises(RunError, match="gensr_backbone.json is missing"):
        GenSR.from_pretrained(run, tiny_data)
