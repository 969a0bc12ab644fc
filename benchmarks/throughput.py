"""GenSR throughput on one GPU: the reference way vs gensr's way, one lever at a time.

One process, one device, the same inputs for every row. The model is flan-t5-base-SHAPED
(d_model 768, 12 + 12 layers, 12 heads, d_ff 2048, gated-gelu, vocab 32128), built from a
config with random weights (no download), inside a GenSR with both history views; prompts of
``--prompt-tokens`` text tokens (80) + the 4 spliced vectors, ``--history`` (20) history
items per user, ``--candidates`` (100) candidates per instance, 40% search instances.

Scoring rows (candidates/s, MFU, agreement with the fp32 reference scores):

* ``reference``: fp32; every (user, candidate) pair is its own instance, so both history
  views are re-encoded per candidate; one-token ``generate(max_new_tokens=1,
  output_scores=True)``; P(Yes) = softmax(scores[0])[Yes];
* ``gensr fp32``: the history encoded once per instance and reused for its candidates, one
  encoder pass + one decoder step (``GenSR.score`` with ``Speed.plain()``);
* then one lever added per row: bf16 backbone weights, the fused T5 pass
  (SDPA, one bias per batch, specialised decoder step), length buckets, 4096 sequences per
  call, ``torch.compile``, CUDA graphs (``--cuda-graphs``); last, ``gensr default``: what
  ``gensr evaluate``/``serve`` run on this device with no options.

Training rows (examples/s at ``--train-batch`` (200) pointwise examples per step = 50
instances x (1 positive + 3 negatives); forward, backward, grad clipping, AdamW step):
``reference`` (fp32, history per example, the backbone's own forward), ``gensr fp32``, then
bf16 autocast, fused T5 pass, fused AdamW, ``torch.compile``.

MFU = model FLOPs/s ÷ the GPU's dense bf16 peak (all rows, fp32 ones included). Model FLOPs
count the backbone only, per pointwise sequence of t positions (no padding), 2 FLOPs per
multiply-add: encoder layers 2·t·d·4i + 4·t²·i + 2·t·d·f·g, decoder layers (one step)
2·d·4i + 2·d·2i + 2·t·d·2i + 4·t·i + 2·d·f·g, LM head 2·d·V (i = heads·d_kv, f = d_ff, g = 3
for gated FFNs, 2 otherwise); training = 3 × forward. Agreement: max and mean |ΔP(Yes)| over
all (instance, candidate) pairs of ``--agree-instances`` (100) instances, and the share of
instances whose top-10 candidates come in the identical order (stable sort), against the
reference scores. The same agreement is measured on trained weights: the benchmark's model
trained for ``--agree-train-steps`` (300) steps with gensr's trainer on the data's training
split, scored on its test instances (and, with ``--agree-run RUN_DIR``, on a trained run).

    python benchmarks/throughput.py                         # CUDA: the shapes above
    python benchmarks/throughput.py --tiny --out /tmp/t.json  # small shapes (CPU smoke run)

On CUDA it writes ``benchmarks/results/throughput_h100.json`` (+ ``.md``) when the GPU name
contains H100, else ``throughput_<gpu>.json``; ``--tiny`` and CPU runs need ``--out``, so
they never overwrite GPU results.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT / "src") not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT / "src"))

from gensr.data.batching import Batch  # noqa: E402
from gensr.models.gensr import GenSR, GenSRConfig, PromptTemplate  # noqa: E402
from gensr.models.gensr.prompt import PromptBuilder  # noqa: E402
from gensr.models.gensr.speed import Speed  # noqa: E402

SHAPES = {
    # google/flan-t5-base's config (random weights)
    "flan-t5-base": dict(d_model=768, layers=12, decoder_layers=12, heads=12, d_ff=2048,
                         vocab=32128),
    "tiny": dict(d_model=64, layers=2, decoder_layers=2, heads=4, d_ff=128, vocab=1000),
}
# dense bf16 tensor-core peaks (NVIDIA data sheets), most specific name first
PEAKS_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4),
                ("GH200", 989.4), ("A100", 312.0), ("L40S", 362.1), ("A10G", 70.0),
                ("L4", 121.0))
SRC_SHARE = 0.4
TOP = 10


# --- model and inputs ------------------------------------------------------------------------
def build_model(data, shape: dict, *, history: int, prompt_tokens: int, seed: int) -> GenSR:
    """A GenSR whose backbone has ``shape`` (random weights, vocab resized to shape['vocab'])
    and whose prompts hold ``prompt_tokens`` text tokens (the templates get a preamble)."""
    torch.manual_seed(seed)
    config = GenSRConfig(
        backbone="scratch-t5", scratch_d_model=shape["d_model"], scratch_layers=shape["layers"],
        scratch_decoder_layers=shape["decoder_layers"], scratch_heads=shape["heads"],
        scratch_d_ff=shape["d_ff"], scratch_vocab_size=3000, scratch_dropout=0.1,
        max_his_len=history, item_text_tokens=10)
    cf = torch.randn(data.n_items + 1, 64)
    cf[0] = 0
    model = GenSR(config, data, cf_table=cf)
    core = model.backbone.core
    if shape["vocab"] > core.config.vocab_size:
        core.resize_token_embeddings(shape["vocab"], mean_resizing=False)
        with torch.no_grad():  # as scratch_t5 does: logits near uniform at the start
            core.get_output_embeddings().weight.normal_(0.0, shape["d_model"] ** -0.5)
    _lengthen_prompts(model, prompt_tokens)
    return model


def _lengthen_prompts(model: GenSR, prompt_tokens: int) -> None:
    """Prefix both templates with words of the template until the rec prompt holds
    ``prompt_tokens`` text tokens (its </s> included; the 4 vector slots not counted)."""
    cfg = model.config
    words = re.findall(r"[a-z]+", cfg.rec_template.lower().replace("{", " {"))
    words = [w for w in words if w not in ("items", "item")] or ["context"]
    preamble: list[str] = []

    def builder(extra: list[str]) -> PromptBuilder:
        head = (" ".join(extra) + ". ") if extra else ""
        parse = PromptTemplate.parse
        return PromptBuilder(
            model.backbone.tokenizer,
            parse(head + cfg.rec_template, plural=cfg.domain_plural,
                  singular=cfg.domain_singular, needs_query=False),
            parse(head + cfg.src_template, plural=cfg.domain_plural,
                  singular=cfg.domain_singular, needs_query=True),
            eos_id=model.backbone.eos_id, pad_id=model.backbone.pad_id)

    prompts = builder(preamble)
    while len(prompts.row(0, torch.zeros(0, dtype=torch.long))) - 4 < prompt_tokens:
        preamble.append(words[len(preamble) % len(words)])
        prompts = builder(preamble)
    model.prompts = prompts
    head = (" ".join(preamble) + ". ") if preamble else ""
    cfg.rec_template, cfg.src_template = head + cfg.rec_template, head + cfg.src_template


def make_batch(data, n: int, candidates: int, history: int, seed: int, *,
               labels: bool = False) -> Batch:
    """``n`` synthetic instances: full histories of random items (rec and search
    interactions), 40% search instances with a random query, random distinct candidates
    (labels [1, 0, 0, …] when ``labels``)."""
    rng = np.random.default_rng(seed)
    task = (rng.random(n) < SRC_SHARE).astype(np.int64)
    n_q = max(data.n_queries, 1)
    query = np.where(task == 1, rng.integers(1, n_q + 1, n), 0) if data.n_queries else task * 0
    items = rng.integers(1, data.n_items + 1, (n, history))
    behaviour = rng.integers(1, 3, (n, history))
    hist_query = np.where(behaviour == 2, rng.integers(1, n_q + 1, (n, history)), 0) \
        if data.n_queries else behaviour * 0
    cands = np.stack([rng.choice(data.n_items, candidates, replace=False) + 1 for _ in range(n)])
    t = torch.from_numpy
    lab = None
    if labels:
        lab = torch.zeros(n, candidates)
        lab[:, 0] = 1.0
    return Batch(user=torch.zeros(n, dtype=torch.long), task=t(task), query=t(query),
                 hist_item=t(items), hist_behaviour=t(behaviour), hist_query=t(hist_query),
                 candidates=t(cands), labels=lab)


def per_candidate(batch: Batch) -> Batch:
    """Every (instance, candidate) pair as its own instance with one candidate (the
    reference way: its history is then encoded once per candidate)."""
    b, c = batch.candidates.shape

    def rep(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x.repeat_interleave(c, dim=0)

    return Batch(user=rep(batch.user), task=rep(batch.task), query=rep(batch.query),
                 hist_item=rep(batch.hist_item), hist_behaviour=rep(batch.hist_behaviour),
                 hist_query=rep(batch.hist_query), candidates=batch.candidates.reshape(b * c, 1),
                 labels=None if batch.labels is None else batch.labels.reshape(b * c, 1))


# --- the reference way ---------------------------------------------------------------------
@torch.no_grad()
def reference_scores(model: GenSR, batch: Batch, chunk: int = 512) -> torch.Tensor:
    """P(Yes) (B, C) the reference way: per-candidate instances (history views re-encoded
    for every candidate) and one-token ``generate``."""
    b, c = batch.candidates.shape
    flat = per_candidate(batch)
    core = model.backbone.core
    tok = model.backbone.tokenizer
    out = []
    for start in range(0, b * c, chunk):
        sub = flat.select(slice(start, start + chunk))  # type: ignore[arg-type]
        enc = model.encode_history(sub)
        vectors = model.slot_vectors(enc, sub.candidates)
        embeds, mask = model.prompt_embeddings(enc, vectors)
        gen = core.generate(inputs_embeds=embeds, attention_mask=mask.long(), max_new_tokens=1,
                            do_sample=False, num_beams=1, output_scores=True,
                            return_dict_in_generate=True, pad_token_id=tok.pad_token_id,
                            eos_token_id=tok.eos_token_id,
                            decoder_start_token_id=model.backbone.decoder_start_id)
        out.append(torch.softmax(gen.scores[0].float(), dim=-1)[:, model.backbone.yes_id])
    return torch.cat(out).view(b, c)


# --- FLOPs, peaks, agreement -----------------------------------------------------------------
def sequence_flops(core_config, t: int) -> float:
    """Forward FLOPs of the backbone for one pointwise sequence of ``t`` positions (see the
    module docstring for the formula)."""
    d, f = core_config.d_model, core_config.d_ff
    i = core_config.num_heads * core_config.d_kv
    g = 3 if getattr(core_config, "is_gated_act", False) else 2
    enc = 2 * t * d * 4 * i + 4 * t * t * i + 2 * t * d * f * g
    dec = 2 * d * 4 * i + 2 * d * 2 * i + 2 * t * d * 2 * i + 4 * t * i + 2 * d * f * g
    layers_dec = core_config.num_decoder_layers or core_config.num_layers
    return float(core_config.num_layers * enc + layers_dec * dec
                 + 2 * d * core_config.vocab_size)


def batch_flops(model: GenSR, batch: Batch) -> float:
    """Forward FLOPs of scoring every candidate of ``batch`` (actual prompt lengths)."""
    lengths = model.encode_history(batch).prompt_mask.sum(dim=1).tolist()
    c = batch.candidates.shape[1]
    cfg = model.backbone.core.config
    return float(sum(c * sequence_flops(cfg, int(t)) for t in lengths))


def peak_tflops(name: str) -> float | None:
    for key, value in PEAKS_TFLOPS:
        if key.lower() in name.lower():
            return value
    return None


def agreement(scores: np.ndarray, reference: np.ndarray, top: int = TOP) -> dict:
    """|ΔP(Yes)| against ``reference`` and the share of instances whose top-``top``
    candidates come in the identical order (stable descending sort)."""
    diff = np.abs(scores.astype(np.float64) - reference.astype(np.float64))
    k = min(top, scores.shape[1])
    mine = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    ref = np.argsort(-reference, axis=1, kind="stable")[:, :k]
    same = (mine == ref).all(axis=1)
    return {"max_abs_dp": float(diff.max()), "mean_abs_dp": float(diff.mean()),
            f"top{top}_identical_share": float(same.mean()),
            "top1_identical_share": float((mine[:, 0] == ref[:, 0]).mean()),
            "instances": int(scores.shape[0])}


def spread(reference: np.ndarray, top: int = TOP) -> dict:
    """How close the reference's candidates are: medians over instances of the relative
    spread (max - min) / mean of P(Yes) and of the smallest gap between consecutive scores
    in the top ``top`` + 1 (absolute and relative to the instance's mean). Random weights
    give near-ties that any bf16 rounding reorders; a trained model spreads its scores."""
    srt = -np.sort(-reference.astype(np.float64), axis=1)
    k = min(top, srt.shape[1] - 1)
    gaps = (srt[:, :k] - srt[:, 1 : k + 1]).min(axis=1)
    mean = np.maximum(np.abs(reference).mean(axis=1), 1e-300)
    return {"relative_spread_median": float(np.median((srt[:, 0] - srt[:, -1]) / mean)),
            f"top{top}_min_gap_median": float(np.median(gaps)),
            f"top{top}_min_gap_relative_median": float(np.median(gaps / mean)),
            "p_yes_median": float(np.median(reference))}


def lever_agreement(model: GenSR, data, levers: list[Lever], args: argparse.Namespace,
                    device: torch.device) -> dict:
    """Agreement of each gensr scoring lever with the fp32 path (``Speed.plain()``) on
    ``--agree-instances`` seeded test instances of ``data`` (their stored candidates), with
    ``model``'s current weights; compiled levers are left out."""
    from gensr.data.batching import eval_instances
    from gensr.errors import ConfigError

    model.set_precision("fp32")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    table = eval_instances(data, "test", max_instances=args.agree_instances, seed=args.seed)
    batches = [b.to(device) for b in table.batches(data, args.instances,
                                                   model.config.max_his_len)]

    def scores(lever: Lever) -> np.ndarray:
        model.set_precision("fp32")
        model.load_state_dict(state, strict=False)
        model.eval()
        model.speed = lever.speed
        model.set_precision(lever.precision)
        with torch.inference_mode():
            return np.concatenate([torch.sigmoid(model.score(b).float()).cpu().numpy()
                                   for b in batches])  # P(Yes): the sigmoid of the log-odds

    reference = scores(Lever("fp32", "gensr", "fp32", Speed.plain()))
    rows = []
    for lever in levers:
        if lever.way != "gensr" or lever.speed.compile != "off":
            continue
        try:
            rows.append({"lever": lever.name, "agreement": agreement(scores(lever), reference)})
        except ConfigError as err:  # e.g. the fused pass on a backbone that is not a T5
            rows.append({"lever": lever.name, "agreement": None, "skipped": str(err)})
    model.set_precision("fp32")
    model.load_state_dict(state, strict=False)
    return {"backbone": model.config.backbone, "instances": int(len(table)),
            "reference": "gensr fp32 (Speed.plain())", "spread": spread(reference),
            "rows": rows}


def agreement_on_run(run_dir: Path, levers: list[Lever], args: argparse.Namespace,
                     device: torch.device) -> dict:
    """:func:`lever_agreement` on a trained run's test instances (its own weights)."""
    from gensr.runs import load_run

    model, data = load_run(run_dir, device=device)
    if model.name != "gensr":
        raise SystemExit(f"--agree-run: {run_dir} holds a {model.name} run, not gensr")
    return {"run": str(run_dir), **lever_agreement(model, data, levers, args, device)}


def agreement_after_training(model: GenSR, data, fp32_state: dict, levers: list[Lever],
                             args: argparse.Namespace, device: torch.device) -> dict:
    """Train the benchmark's own model (from its random weights) for ``--agree-train-steps``
    steps with gensr's trainer (:func:`gensr.train.fit`: the package's defaults on this
    device, one validation at the end) on ``data``'s training split, then
    :func:`lever_agreement` on its test instances: a trained model spreads its scores,
    random weights leave near-ties that any rounding reorders."""
    from gensr.train import TrainConfig, fit

    steps = args.agree_train_steps
    model.set_precision("fp32")
    model.load_state_dict(fp32_state, strict=False)
    model.speed = Speed()
    config = TrainConfig(
        n_negatives=args.negatives, batch_size=max(1, args.train_batch // (1 + args.negatives)),
        lr=args.agree_train_lr, warmup_steps=max(1, steps // 10), max_steps=steps,
        eval_every=steps, eval_max_instances=args.agree_instances, eval_batch_size=args.instances,
        patience=0, seed=args.seed, log_every=max(1, steps // 10), device=device.type,
        progress=False)
    log = print if args.verbose else (lambda _msg: None)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        state = fit(model, data, config, Path(tmp) / "run", log=log)
        seconds = time.perf_counter() - start
    last = state.history[-1]
    result = lever_agreement(model, data, levers, args, device)
    model.set_precision("fp32")
    model.load_state_dict(fp32_state, strict=False)  # random weights again
    return {"train_steps": state.step, "train_seconds": round(seconds, 1),
            "train_lr": args.agree_train_lr, "train_batch_instances": config.batch_size,
            "train_loss_last_interval": last["train_loss"],
            "valid": {"metric": config.metric, "value": last["value"],
                      "instances": args.agree_instances}, **result}


# --- timing --------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[int], object], warmup: int, iters: int, device: torch.device
          ) -> float:
    """Seconds per call of ``fn(i)`` over ``iters`` calls after ``warmup`` calls."""
    for i in range(warmup):
        fn(i)
    _sync(device)
    start = time.perf_counter()
    for i in range(iters):
        fn(i)
    _sync(device)
    return (time.perf_counter() - start) / max(iters, 1)


def _reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory_gib(device: torch.device) -> float | None:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return None


@dataclass
class Lever:
    """One row: a name, the way (reference or gensr), weights precision (scoring) or autocast
    (training), the speed settings and, for training, whether AdamW is fused."""

    name: str
    way: str  # "reference" | "gensr"
    precision: str  # "fp32" | "bf16"
    speed: Speed
    fused_adamw: bool = False


def scoring_levers(args: argparse.Namespace, device: torch.device) -> list[Lever]:
    base = dataclasses.replace(Speed.plain(), chunk=args.ref_chunk)
    rows = [Lever("reference: fp32, history per candidate, generate", "reference", "fp32",
                  base),
            Lever("gensr fp32: history per instance, one decoder step", "gensr", "fp32", base)]
    steps = [("+ bf16 weights", "bf16", {}),
             ("+ fused T5 pass (SDPA, one bias/batch)", "bf16", {"runner": "fused"}),
             ("+ length buckets (8 tokens)", "bf16", {"bucket": 8}),
             ("+ buckets padded to 16 positions", "bf16", {"pad_to": 16}),
             (f"+ {args.chunk} sequences per call", "bf16", {"chunk": args.chunk})]
    if args.compile:
        steps.append(("+ torch.compile", "bf16", {"compile": "default"}))
    if args.cuda_graphs:
        steps.append(("+ CUDA graphs (compile reduce-overhead)", "bf16",
                      {"compile": "reduce-overhead"}))
    speed = base
    for name, precision, change in steps:
        speed = dataclasses.replace(speed, **change)
        rows.append(Lever(name, "gensr", precision, speed))
    rows.append(Lever("gensr default on this device (auto)", "gensr", "auto", Speed()))
    return rows


def training_levers(args: argparse.Namespace, device: torch.device) -> list[Lever]:
    base = Speed.plain()
    rows = [Lever("reference: fp32, history per example", "reference", "fp32", base),
            Lever("gensr fp32: history per instance", "gensr", "fp32", base)]
    steps: list[tuple[str, str, dict, bool]] = [
        ("+ bf16 autocast", "bf16", {}, False),
        ("+ fused T5 pass (SDPA, one bias/batch)", "bf16", {"runner": "fused"}, False),
        ("+ fused AdamW", "bf16", {}, True)]
    if args.compile:
        steps.append(("+ torch.compile", "bf16", {"compile": "default"}, True))
    speed = base
    for name, precision, change, fused in steps:
        speed = dataclasses.replace(speed, **change)
        rows.append(Lever(name, "gensr", precision, speed, fused))
    return rows


# --- the runs ------------------------------------------------------------------------------
def run_scoring(model: GenSR, lever: Lever, batches: list[Batch], agree: list[Batch],
                reference: np.ndarray | None, fp32_state: dict, args: argparse.Namespace,
                device: torch.device, peak: float | None) -> tuple[dict, np.ndarray]:
    """Time ``lever`` on ``batches[1:]`` (``batches[0]`` warms up), then score ``agree``."""
    model.set_precision("fp32")
    model.load_state_dict(fp32_state, strict=False)  # the same weights for every row
    model.eval()
    model.speed = lever.speed
    precision = model.set_precision(lever.precision)
    _reset_memory(device)
    if lever.way == "reference":
        def score(batch: Batch) -> torch.Tensor:
            return reference_scores(model, batch, args.ref_chunk)
    else:
        def score(batch: Batch) -> torch.Tensor:
            with torch.inference_mode():  # P(Yes), as the reference: sigmoid of the log-odds
                return torch.sigmoid(model.score(batch).float())
    warm = args.warmup + (1 if lever.speed.compile != "off" else 0)
    timed_batches = batches[1:]
    seconds = _time_scoring(score, batches[0], timed_batches, warm, device)
    n_cands = sum(b.candidates.numel() for b in timed_batches)
    flops = sum(batch_flops(model, b) for b in timed_batches)
    scores = np.concatenate([score(b).float().cpu().numpy() for b in agree])
    row = {"lever": lever.name, "way": lever.way, "precision": precision,
           "speed": dataclasses.asdict(model.resolved_speed()) if lever.way == "gensr" else None,
           "candidates": n_cands, "seconds": round(seconds, 4),
           "candidates_per_s": round(n_cands / seconds, 1),
           "tflops_per_s": round(flops / seconds / 1e12, 2),
           "mfu": round(flops / seconds / 1e12 / peak, 4) if peak else None,
           "peak_memory_gib": _peak_memory_gib(device)}
    if reference is not None:
        row["agreement"] = agreement(scores, reference)
    return row, scores


def _time_scoring(score: Callable[[Batch], torch.Tensor], warm_batch: Batch,
                  batches: list[Batch], warm: int, device: torch.device) -> float:
    """Seconds to score ``batches`` after ``warm`` untimed calls on ``warm_batch``."""
    for _ in range(warm):
        score(warm_batch)
    _sync(device)
    start = time.perf_counter()
    for batch in batches:
        score(batch)
    _sync(device)
    return time.perf_counter() - start


def run_training(model: GenSR, lever: Lever, batches: list[Batch], fp32_state: dict,
                 args: argparse.Namespace, device: torch.device, peak: float | None) -> dict:
    model.set_precision("fp32")
    model.load_state_dict(fp32_state, strict=False)
    model.train()
    model.speed = lever.speed
    params = [p for p in model.parameters() if p.requires_grad]
    kwargs = {"fused": True} if lever.fused_adamw else {}
    try:
        optimizer = torch.optim.AdamW(params, lr=1e-5, **kwargs)
    except (RuntimeError, TypeError):  # no fused AdamW for this device/torch
        optimizer = torch.optim.AdamW(params, lr=1e-5)
        kwargs = {}
    if lever.way == "reference":
        batches = [per_candidate(b) for b in batches]
    autocast = lever.precision == "bf16"
    _reset_memory(device)

    def step(i: int) -> None:
        batch = batches[i % len(batches)]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = model.loss(batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    warm = args.warmup + (1 if lever.speed.compile != "off" else 0)
    seconds = timed(step, warm, args.train_steps, device)
    examples = batches[0].candidates.numel()
    lengths = model.encode_history(batches[0]).prompt_mask.sum(dim=1).tolist()
    c = batches[0].candidates.shape[1]
    cfg = model.backbone.core.config
    flops = 3 * sum(c * sequence_flops(cfg, int(t)) for t in lengths)
    row = {"lever": lever.name, "way": lever.way,
           "precision": "bf16 autocast" if autocast else "fp32",
           "speed": dataclasses.asdict(model.resolved_speed()),
           "fused_adamw": bool(kwargs), "batch_examples": examples,
           "steps": args.train_steps, "seconds_per_step": round(seconds, 4),
           "examples_per_s": round(examples / seconds, 1),
           "tflops_per_s": round(flops / seconds / 1e12, 2),
           "mfu": round(flops / seconds / 1e12 / peak, 4) if peak else None,
           "peak_memory_gib": _peak_memory_gib(device)}
    optimizer.zero_grad(set_to_none=True)
    return row


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def default_out(name: str) -> Path:
    if "h100" in name.lower():
        return RESULTS / "throughput_h100.json"
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower().removeprefix("nvidia ")).strip("_")
    return RESULTS / f"throughput_{slug}.json"


def run(args: argparse.Namespace) -> dict:
    from gensr.data import load_data
    from gensr.data.prepare import prepare

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    shape = SHAPES["tiny" if args.tiny else args.shape]
    name = device_name(device)
    peak = args.peak_tflops or (peak_tflops(name) if device.type == "cuda" else None)
    # the synthetic data lives until the run ends (the trainer and the stored candidates
    # read it lazily)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data
        if data_dir is None:
            data_dir = Path(tmp) / "data"
            prepare("synthetic", None, data_dir,
                    options={"n_users": 300, "n_items": 400, "seed": 0} if args.tiny else None)
        return _run(args, load_data(data_dir), device, shape, name, peak)


def _run(args: argparse.Namespace, data, device: torch.device, shape: dict, name: str,
         peak: float | None) -> dict:
    model = build_model(data, shape, history=args.history, prompt_tokens=args.prompt_tokens,
                        seed=args.seed).to(device)
    fp32_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    n_params = sum(p.numel() for p in model.backbone.parameters())

    mk = lambda n, seed, **kw: make_batch(data, n, args.candidates, args.history, seed,  # noqa: E731
                                          **kw).to(device)
    batches = [mk(args.instances, 1000 + i) for i in range(args.iters + 1)]  # [0]: warm-up
    agree = [mk(min(args.instances, args.agree_instances - s), 2000 + s)
             for s in range(0, args.agree_instances, args.instances)]
    n_train = max(1, args.train_batch // (1 + args.negatives))
    train_batches = [mk(n_train, 3000 + i, labels=True) for i in range(2)]
    for b in train_batches:  # 1 positive + `negatives` negatives per instance
        b.candidates, b.labels = (b.candidates[:, : 1 + args.negatives],
                                  b.labels[:, : 1 + args.negatives])  # type: ignore[index]
    lengths = torch.cat([model.encode_history(b).prompt_mask.sum(dim=1) for b in batches])

    scoring, reference = [], None
    levers = scoring_levers(args, device)
    for lever in levers:
        if args.verbose:
            print(f"scoring: {lever.name}", flush=True)
        row, scores = run_scoring(model, lever, batches, agree, reference, fp32_state,
                                  args, device, peak)
        if lever.way == "reference":
            reference = scores
        scoring.append(row)
    agree_run = agreement_on_run(args.agree_run, levers, args, device) if args.agree_run else None
    training = []
    if args.train_steps > 0:
        for lever in training_levers(args, device):
            if args.verbose:
                print(f"training: {lever.name}", flush=True)
            training.append(run_training(model, lever, train_batches, fp32_state, args,
                                         device, peak))
    agree_trained = None
    if args.agree_train_steps > 0:
        if args.verbose:
            print(f"agreement after {args.agree_train_steps} training steps", flush=True)
        agree_trained = agreement_after_training(model, data, fp32_state, levers, args, device)

    import transformers

    import gensr

    cfg = model.backbone.core.config
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": str(device), "gpu": name if device.type == "cuda" else None,
        "device_name": name, "peak_bf16_tflops": peak,
        "peak_source": ("--peak-tflops" if args.peak_tflops else
                        "NVIDIA data sheet, dense bf16, by GPU name" if peak else None),
        "tiny": bool(args.tiny),
        "model": {"shape": "tiny" if args.tiny else args.shape, **shape,
                  "d_kv": cfg.d_kv, "feed_forward_proj": cfg.feed_forward_proj,
                  "backbone_parameters": int(n_params), "weights": "random (from config)"},
        "inputs": {"instances_per_batch": args.instances, "timed_batches": args.iters,
                   "candidates": args.candidates, "history": args.history,
                   "prompt_text_tokens": args.prompt_tokens,
                   "sequence_positions_mean": round(float(lengths.float().mean()), 1),
                   "sequence_positions_min": int(lengths.min()),
                   "sequence_positions_max": int(lengths.max()),
                   "search_share": round(float(torch.cat([b.task for b in batches]).float()
                                               .mean()), 3),
                   "agree_instances": args.agree_instances,
                   "train_batch_examples": n_train * (1 + args.negatives),
                   "train_instances": n_train, "negatives": args.negatives,
                   "reference_chunk": args.ref_chunk, "warmup": args.warmup,
                   "agree_train_steps": args.agree_train_steps},
        "flops_formula": "backbone only, per sequence of t positions: encoder layers "
                         "2*t*d*4i + 4*t^2*i + 2*t*d*f*g; decoder layers (one step) 2*d*4i + "
                         "2*d*2i + 2*t*d*2i + 4*t*i + 2*d*f*g; head 2*d*V; i = heads*d_kv, "
                         "g = 3 (gated FFN) or 2; training = 3x forward",
        "scoring": scoring, "training": training,
        "agreement_spread": spread(reference) if reference is not None else None,
        "agreement_run": agree_run,
        "agreement_trained": agree_trained,
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "transformers": transformers.__version__, "gensr": gensr.__version__,
                    "cuda": torch.version.cuda, "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "platform": platform.platform()},
        "note": args.note,
    }


# --- output --------------------------------------------------------------------------------
def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def score_cells(row: dict) -> list[str]:
    a = row.get("agreement") or {}
    return [row["lever"], row["precision"], _fmt(row["candidates_per_s"], ",.0f"),
            _fmt(row["mfu"] * 100 if row["mfu"] is not None else None, ".1f"),
            _fmt(a.get("max_abs_dp"), ".1e"), _fmt(a.get(f"top{TOP}_identical_share"), ".2f"),
            _fmt(row["peak_memory_gib"], ".1f")]


def train_cells(row: dict) -> list[str]:
    return [row["lever"], row["precision"], _fmt(row["examples_per_s"], ",.0f"),
            _fmt(row["mfu"] * 100 if row["mfu"] is not None else None, ".1f"),
            _fmt(row["peak_memory_gib"], ".1f")]


SCORE_HEAD = ("scoring", "precision", "cand/s", "MFU %", "max abs dP", f"top-{TOP} same",
              "GiB")
TRAIN_HEAD = ("training", "precision", "ex/s", "MFU %", "GiB")


def print_tables(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(120, Console().width))
    title = (f"GenSR throughput on {result['device_name']} ({result['model']['shape']} shape, "
             f"{result['model']['backbone_parameters']:,} backbone parameters)")
    for head, rows, cells in ((SCORE_HEAD, result["scoring"], score_cells),
                              (TRAIN_HEAD, result["training"], train_cells)):
        if not rows:
            continue
        table = Table(title=title)
        for h in head:
            table.add_column(h, justify="left" if h in ("scoring", "training") else "right")
        for row in rows:
            table.add_row(*cells(row))
        console.print(table)


def _md_table(head: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    """Markdown lines of a table whose first two columns are text, the rest numbers."""
    return ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2),
            *("| " + " | ".join(cells) + " |" for cells in rows)]


def _agreement_table(block: dict) -> list[str]:
    """Markdown lines: each lever's agreement with fp32 on trained weights."""
    lines = [f"| lever | max abs dP | mean abs dP | top-{TOP} same | top-1 same |",
             "|---|---:|---:|---:|---:|"]
    for row in block["rows"]:
        a = row["agreement"] or {}
        lines.append(f"| {row['lever']} | {_fmt(a.get('max_abs_dp'), '.1e')} | "
                     f"{_fmt(a.get('mean_abs_dp'), '.1e')} | "
                     f"{_fmt(a.get(f'top{TOP}_identical_share'), '.2f')} | "
                     f"{_fmt(a.get('top1_identical_share'), '.2f')} |")
    return lines


def markdown(result: dict) -> str:
    m, inp = result["model"], result["inputs"]
    lines = [
        "# GenSR throughput: the reference way vs gensr's way",
        "",
        f"{result['date']}: `benchmarks/throughput.py`{' --tiny' if result['tiny'] else ''} on "
        f"**{result['device_name']}** (torch {result['machine']['torch']}, transformers "
        f"{result['machine']['transformers']}). Model: {m['shape']}-shaped T5 backbone "
        f"(d_model {m['d_model']}, {m['layers']}+{m['decoder_layers']} layers, {m['heads']} "
        f"heads, d_ff {m['d_ff']}, {m['feed_forward_proj']}, vocab {m['vocab']}; "
        f"{m['backbone_parameters']:,} parameters, random weights) inside GenSR. Inputs: "
        f"{inp['instances_per_batch']} instances x {inp['candidates']} candidates per batch, "
        f"{inp['timed_batches']} timed batches, {inp['history']}-item histories, prompts of "
        f"{inp['prompt_text_tokens']} text tokens + 4 vectors (mean "
        f"{inp['sequence_positions_mean']} positions with queries), "
        f"{inp['search_share']:.0%} search.",
        "",
        *_md_table(SCORE_HEAD, [score_cells(r) for r in result["scoring"]]),
    ]
    if result["training"]:
        lines += ["", f"Training: {inp['train_batch_examples']} pointwise examples per step "
                  f"({inp['train_instances']} instances x (1 + {inp['negatives']})), forward + "
                  "backward + grad clipping + AdamW.", "",
                  *_md_table(TRAIN_HEAD, [train_cells(r) for r in result["training"]])]
    peak = result["peak_bf16_tflops"]
    mfu = (f"MFU: model FLOPs/s over {peak} TFLOP/s dense bf16 ({result['peak_source']})"
           if peak else "MFU: no peak known for this device (give --peak-tflops)")
    lines += ["", f"{mfu}; FLOPs: {result['flops_formula']}. Agreement: against the "
              f"reference's fp32 P(Yes) on {inp['agree_instances']} instances x "
              f"{inp['candidates']} candidates (max abs dP = largest absolute difference in "
              f"P(Yes)); top-{TOP} same = share of instances whose top {TOP} come in the "
              "identical order. GiB = peak CUDA memory allocated."]
    sp = result.get("agreement_spread")
    if sp:
        lines += ["", f"Reference scores (random weights): median P(Yes) {sp['p_yes_median']:.3g}, "
                  f"median relative spread within an instance {sp['relative_spread_median']:.3g}, "
                  f"median smallest gap in the top {TOP + 1} {sp[f'top{TOP}_min_gap_median']:.3g} "
                  f"({sp[f'top{TOP}_min_gap_relative_median']:.2g} of the mean): near-ties that "
                  "bf16 rounding can reorder."]
    run = result.get("agreement_run")
    if run:
        lines += ["", f"Agreement with fp32 on the run `{run['run']}` (backbone "
                  f"`{run['backbone']}`, {run['instances']} test instances):", "",
                  *_agreement_table(run)]
    trained = result.get("agreement_trained")
    if trained:
        sp = trained["spread"]
        loss = _fmt(trained["train_loss_last_interval"], ".3f")
        lines += ["", f"Agreement with fp32 after training this model for "
                  f"{trained['train_steps']} steps (gensr's trainer, "
                  f"{trained['train_batch_instances']} instances x (1 + {inp['negatives']}) "
                  f"per step, lr {trained['train_lr']:g}, {trained['train_seconds']} s; mean "
                  f"train loss of the last interval {loss}, "
                  f"valid {trained['valid']['metric']} {trained['valid']['value']:.4f} on "
                  f"{trained['valid']['instances']} instances), on {trained['instances']} test "
                  f"instances x their 100 stored candidates; median relative spread "
                  f"{sp['relative_spread_median']:.3g}, median smallest top-{TOP + 1} gap "
                  f"{sp[f'top{TOP}_min_gap_relative_median']:.2g} of the mean:", "",
                  *_agreement_table(trained)]
    if result.get("note"):
        lines += ["", result["note"]]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true",
                    help="Small shapes and few iterations (a smoke run; CPU is fine).")
    ap.add_argument("--shape", default="flan-t5-base", choices=sorted(SHAPES))
    ap.add_argument("--device", default=None, help="cuda | cpu (default: cuda if present).")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON to write (+ .md beside it). Default on CUDA: "
                         "benchmarks/results/throughput_h100.json (or _<gpu>); required "
                         "with --tiny or on CPU.")
    ap.add_argument("--data", type=Path, default=None,
                    help="A gensr data directory for item texts and queries (default: the "
                         "embedded synthetic data, made in a temporary directory).")
    ap.add_argument("--instances", type=int, default=None, help="Instances per scoring batch.")
    ap.add_argument("--iters", type=int, default=None, help="Timed scoring batches.")
    ap.add_argument("--warmup", type=int, default=1, help="Untimed calls before timing.")
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--history", type=int, default=20)
    ap.add_argument("--prompt-tokens", type=int, default=80)
    ap.add_argument("--agree-instances", type=int, default=None)
    ap.add_argument("--ref-chunk", type=int, default=512,
                    help="Pointwise sequences per call for the reference and gensr fp32 rows.")
    ap.add_argument("--chunk", type=int, default=4096,
                    help="Sequences per backbone call of the 'larger batches' lever.")
    ap.add_argument("--train-batch", type=int, default=None,
                    help="Pointwise examples per training step.")
    ap.add_argument("--negatives", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=None, help="Timed training steps.")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="Add torch.compile rows (default: on CUDA).")
    ap.add_argument("--cuda-graphs", action="store_true",
                    help="Add a CUDA-graphs row (torch.compile mode reduce-overhead).")
    ap.add_argument("--agree-run", type=Path, default=None,
                    help="Also measure each lever's agreement with fp32 on this trained GenSR "
                         "run's test instances (random weights give near-tied scores).")
    ap.add_argument("--agree-train-steps", type=int, default=None,
                    help="Also train the benchmark's model for this many steps (gensr's "
                         "trainer, on the data's training split) and measure each lever's "
                         "agreement with fp32 on it (default 300; 0 with --tiny; 0 = off).")
    ap.add_argument("--agree-train-lr", type=float, default=3e-4,
                    help="Learning rate of those steps (AdamW, 10%% warm-up, linear decay).")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="Dense bf16 peak for MFU when the GPU name is not in the table.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--note", default="", help="Free text stored with the results.")
    ap.add_argument("--verbose", action="store_true", help="Print each row as it starts.")
    args = ap.parse_args(argv)
    cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    small = args.tiny
    defaults = {"instances": 4 if small else 64, "iters": 1 if small else 3,
                "agree_instances": 8 if small else 100, "train_batch": 20 if small else 200,
                "train_steps": 1 if small else 5, "agree_train_steps": 0 if small else 300}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.compile is None:
        args.compile = cuda and not small
    if args.out is None and (small or not cuda):
        ap.error("--tiny and CPU runs need --out PATH (so they never overwrite GPU results)")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    result = run(args)
    print_tables(result)
    out = args.out or default_out(result["device_name"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return result


if __name__ == "__main__":
    main()
