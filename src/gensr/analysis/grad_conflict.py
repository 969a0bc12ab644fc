"""``gensr analyze grad-conflict``: per training step, the cosine between the search-loss and
the rec-loss gradients on one shared self-attention block, for each model, on identical
mini-batches.

Each model trains a short run from its config with the shared trainer's pieces
(:class:`~gensr.data.batching.TrainSampler` for the data order and negatives, the model's
``param_groups`` for AdamW, :func:`~gensr.train.loop.warmup_linear` for the schedule, the
same grad-norm clipping). Every model sees the same sequence of batches: one sampler with one
seed, one ``batch_size`` and ``n_negatives`` for all. Per step:

1. split the batch by task; ``g_R = ∇_θs model.loss(rec rows)``, ``g_S = ∇_θs
   model.loss(src rows)`` with autograd, θs = ``model.shared_parameters()`` flattened;
2. record cos(g_S, g_R) = g_S·g_R / (|g_S| |g_R|) (NaN when a task is absent or a gradient
   is zero), the norms and the two losses;
3. take the optimizer step on ``model.loss(whole batch)``, as the trainer would.

Computation is fp32 in train mode (dropout on, as in training), no autocast.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gensr.analysis.common import mean_std, prepare_out, pyplot, save_figure, write_csv, write_json
from gensr.data.batching import TASK_INDEX, Batch, TrainSampler
from gensr.data.dataset import SRData
from gensr.errors import ConfigError
from gensr.models.base import SRModel
from gensr.models.registry import model_class
from gensr.progress import progress as progress_bar
from gensr.runs import pick_device
from gensr.train.config import TrainConfig
from gensr.train.loop import make_optimizer, warmup_linear
from gensr.train.run import build_configs, build_model


@dataclass
class ConflictModel:
    """One model to train and measure: a label, ``build(data, seed)`` returning the model
    initialised from ``seed``, and its train settings (lr, weight_decay, warmup_steps,
    grad_clip are the model's own; batch_size, n_negatives and seed are overridden by the
    analysis so that every model sees the same batches)."""

    label: str
    build: Callable[[SRData, int], SRModel]
    train: TrainConfig


def models_from_specs(
    specs: Sequence[str],
    sets: Sequence[str] | None = None,
    cf_path: str | Path | None = None,
) -> list[ConflictModel]:
    """``NAME`` or ``NAME:CONFIG.yaml`` per model; ``--set KEY=V`` applies to every model that
    has the key, ``--set LABEL:KEY=V`` to one (LABEL = NAME, or NAME#2 for a repeated name)."""
    parsed: list[tuple[str, str, str | None]] = []
    seen: dict[str, int] = {}
    for spec in specs:
        name, sep, config = spec.partition(":")
        seen[name] = seen.get(name, 0) + 1
        label = name if seen[name] == 1 else f"{name}#{seen[name]}"
        parsed.append((label, name, config if sep else None))
    labels = {label for label, _, _ in parsed}
    common: list[str] = []
    own: dict[str, list[str]] = {label: [] for label in labels}
    for item in sets or []:
        head, sep, rest = item.partition(":")
        if sep and head in labels and "=" not in head:
            own[head].append(rest)
        elif sep and "=" not in head and head not in labels:
            raise ConfigError(f"--set {item!r}: {head!r} is not one of the models "
                              f"{sorted(labels)}")
        else:
            common.append(item)
    classes = {name: model_class(name) for _, name, _ in parsed}
    for item in common:
        key = item.partition("=")[0].strip()
        if not any(_has_setting(c.config_class, key) for c in classes.values()):
            raise ConfigError(f"--set {item!r}: no model among {sorted(classes)} has a "
                              f"setting {key!r} (see `gensr train --set nope=1` for the list)")
    out = []
    for label, name, config in parsed:
        cls = classes[name]
        # keep only the common settings this model has (a GenSR key must not break SASRec)
        applicable = [item for item in common
                      if _has_setting(cls.config_class, item.partition("=")[0].strip())]
        takes_cf = "cf_path" in cls.config_class.__dataclass_fields__
        model_config, train_config = build_configs(
            name, config_path=config, sets=applicable + own[label],
            cf_path=cf_path if takes_cf else None)

        def build(data: SRData, seed: int, name: str = name,
                  model_config=model_config) -> SRModel:
            return build_model(name, model_config, data, seed)

        out.append(ConflictModel(label, build, train_config))
    return out


def _has_setting(config_class: type, key: str) -> bool:
    """Whether ``--set key=...`` names a setting of ``config_class`` or of TrainConfig."""
    head, dot, rest = key.partition(".")
    model_keys = set(config_class.__dataclass_fields__)
    train_keys = set(TrainConfig.__dataclass_fields__)
    if dot and head == "model":
        return rest in model_keys
    if dot and head == "train":
        return rest in train_keys
    return key in model_keys or key in train_keys


def task_gradients(model: SRModel, batch: Batch,
                   params: Sequence[torch.nn.Parameter]) -> dict[str, Any]:
    """Per task, the loss on that task's rows and its gradient on ``params`` (flattened);
    the cosine between the two gradients (NaN when one is missing or zero)."""
    out: dict[str, Any] = {}
    grads: dict[str, torch.Tensor | None] = {}
    for task, index in TASK_INDEX.items():
        rows = (batch.task == index).nonzero().flatten()
        out[f"n_{task}"] = len(rows)
        if len(rows) == 0:
            grads[task], out[f"loss_{task}"] = None, math.nan
            continue
        loss = model.loss(batch.select(rows)).loss
        parts = torch.autograd.grad(loss, list(params), allow_unused=True)
        grads[task] = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                                 for g, p in zip(parts, params)]).double()
        out[f"loss_{task}"] = float(loss.detach())
    for task in TASK_INDEX:
        g = grads[task]
        out[f"norm_{task}"] = float(g.norm()) if g is not None else math.nan
    g_r, g_s = grads["rec"], grads["src"]
    if g_r is None or g_s is None or float(g_r.norm()) == 0.0 or float(g_s.norm()) == 0.0:
        out["cos"] = math.nan
    else:
        out["cos"] = float(torch.dot(g_r, g_s) / (g_r.norm() * g_s.norm()))
    return out


def shared_params(model: SRModel) -> list[tuple[str, torch.nn.Parameter]]:
    """``model.shared_parameters()`` with clear errors for a missing hook or frozen block."""
    try:
        named = list(model.shared_parameters())
    except NotImplementedError as err:
        raise ConfigError(f"{model.name}: {err} (grad-conflict needs models that implement "
                          "shared_parameters())") from None
    named = [(n, p) for n, p in named if p.requires_grad]
    if not named:
        raise ConfigError(f"{model.name}: its shared block has no trainable parameters")
    return named


def run_grad_conflict(
    data: SRData,
    models: Sequence[ConflictModel],
    out: str | Path,
    *,
    steps: int = 200,
    batch_size: int | None = None,
    n_negatives: int | None = None,
    seed: int | None = None,
    smooth: int = 20,
    device: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train each model for ``steps`` steps on the same batches, measuring the gradient
    cosine every step; write ``grad_conflict.csv``, ``.png`` and ``.json`` into ``out``.

    ``batch_size``, ``n_negatives`` and ``seed`` (the data order, negatives and model
    initialisation) default to the first model's train config and apply to all models.
    """
    if not models:
        raise ConfigError("grad-conflict needs at least one model")
    if steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {steps}")
    if smooth < 1:
        raise ConfigError(f"--smooth must be >= 1, got {smooth}")
    out = prepare_out(out)
    first = models[0].train
    batch_size = batch_size or first.batch_size
    n_negatives = n_negatives or first.n_negatives
    seed = first.seed if seed is None else seed
    dev = pick_device(device)
    sampler = TrainSampler(data, n_negatives, seed=seed)
    epochs: dict[int, Any] = {}
    started = time.time()
    rows: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    for spec in models:
        train = replace(spec.train, batch_size=batch_size, n_negatives=n_negatives, seed=seed)
        torch.manual_seed(seed)
        model = spec.build(data, seed).to(dev)
        missing = [t for t in TASK_INDEX if t not in model.tasks]
        if missing:
            raise ConfigError(f"{spec.label} ({model.name}) does not serve {missing}: "
                              "grad-conflict needs models trained on both tasks")
        named = shared_params(model)
        params = [p for _, p in named]
        groups = [g for g in model.param_groups(train.weight_decay) if g["params"]]
        optimizer = make_optimizer(groups, train.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_linear(train.warmup_steps, steps))
        info[spec.label] = {"model": model.name,
                            "shared_parameters": [n for n, _ in named],
                            "shared_numel": int(sum(p.numel() for p in params)),
                            "train": {k: v for k, v in asdict(train).items()
                                      if k in ("lr", "weight_decay", "warmup_steps",
                                               "grad_clip", "batch_size", "n_negatives",
                                               "seed")}}
        model.train()
        step, epoch = 0, 0
        bar = progress_bar(total=steps, desc=f"grad-conflict {spec.label}", enabled=progress,
                           leave=False)
        while step < steps:
            if epoch not in epochs:
                epochs[epoch] = sampler.epoch(epoch)
            table, order = epochs[epoch]
            for batch in table.batches(data, batch_size, model.history_window,
                                       order=order):
                batch = batch.to(dev)
                stats = task_gradients(model, batch, params)
                total = model.loss(batch).loss
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if train.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                step += 1
                rows.append({"label": spec.label, "model": model.name, "step": step,
                             "epoch": epoch, "cos": stats["cos"],
                             "norm_rec": stats["norm_rec"], "norm_src": stats["norm_src"],
                             "loss_rec": stats["loss_rec"], "loss_src": stats["loss_src"],
                             "loss": float(total.detach()), "lr": lr,
                             "n_rec": stats["n_rec"], "n_src": stats["n_src"]})
                bar.update(1)
                bar.set_postfix(cos=f"{stats['cos']:.3f}")
                if step >= steps:
                    break
            epoch += 1
        bar.close()
        cos = [r["cos"] for r in rows if r["label"] == spec.label]
        info[spec.label].update(describe(cos))
        log(f"{spec.label}: mean cos {info[spec.label]['mean_cos']:.4f}, "
            f"{100 * info[spec.label]['frac_negative']:.1f}% of steps conflicting (cos < 0), "
            f"{steps} steps")
        del model, optimizer
    paths = {"csv": write_csv(rows, out / "grad_conflict.csv")}
    paths["png"] = plot_conflict(rows, out / "grad_conflict.png", smooth)
    paths["json"] = out / "grad_conflict.json"
    summary = {
        "analysis": "grad-conflict",
        "definition": "cos(g_S, g_R) per step, g_T = gradient of model.loss on the batch's "
                      "task-T rows w.r.t. model.shared_parameters() (one self-attention "
                      "block), flattened; then one AdamW step on model.loss(whole batch)",
        "data": {"path": str(data.path), "fingerprint": data.fingerprint},
        "steps": steps, "batch_size": batch_size, "n_negatives": n_negatives, "seed": seed,
        "device": str(dev), "smooth": smooth,
        "models": info,
        "files": {k: str(v) for k, v in paths.items()},
        "time_s": round(time.time() - started, 1),
    }
    write_json(summary, out / "grad_conflict.json")
    return summary


def describe(cos: Sequence[float]) -> dict[str, float]:
    """Mean, median, std, share of negative cosines, and the mean over the last half."""
    arr = np.asarray([c for c in cos if math.isfinite(c)], dtype=float)
    if len(arr) == 0:
        return {"mean_cos": math.nan, "median_cos": math.nan, "std_cos": math.nan,
                "frac_negative": math.nan, "mean_cos_last_half": math.nan, "n_measured": 0}
    mean, std, _ = mean_std(arr)
    return {"mean_cos": mean, "median_cos": float(np.median(arr)), "std_cos": std,
            "frac_negative": float((arr < 0).mean()),
            "mean_cos_last_half": float(arr[len(arr) // 2:].mean()), "n_measured": len(arr)}


def rolling_mean(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` finite values (NaN-aware)."""
    arr = np.asarray(values, dtype=float)
    out = np.full(len(arr), np.nan)
    for i in range(len(arr)):
        part = arr[max(0, i - window + 1): i + 1]
        part = part[np.isfinite(part)]
        if len(part):
            out[i] = part.mean()
    return out


def plot_conflict(rows: list[dict[str, Any]], path: Path, smooth: int) -> Path:
    """Left: cosine per step (faint) and its trailing mean over ``smooth`` steps. Right: the
    histogram of per-step cosines per model."""
    plt = pyplot()
    labels = list(dict.fromkeys(r["label"] for r in rows))
    colors = plt.get_cmap("tab10")
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.5),
                                  gridspec_kw={"width_ratios": [3, 2]})
    bins = np.linspace(-1, 1, 41)
    for j, label in enumerate(labels):
        pts = [r for r in rows if r["label"] == label]
        steps = [r["step"] for r in pts]
        cos = [r["cos"] for r in pts]
        stats = describe(cos)
        ax.plot(steps, cos, color=colors(j), alpha=0.25, lw=0.8)
        ax.plot(steps, rolling_mean(cos, smooth), color=colors(j), lw=2,
                label=f"{label}: mean {stats['mean_cos']:.3f}")
        finite = [c for c in cos if math.isfinite(c)]
        ax2.hist(finite, bins=bins, color=colors(j), alpha=0.5,
                 label=f"{label}: {100 * stats['frac_negative']:.0f}% < 0")
        ax2.axvline(stats["mean_cos"], color=colors(j), ls="--", lw=1)
    for a in (ax, ax2):
        a.axhline(0, color="grey", lw=0.8) if a is ax else a.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("training step")
    ax.set_ylabel("cos(∇L_search, ∇L_rec) on the shared block")
    ax.set_title(f"Gradient conflict per step (bold: trailing mean of {smooth})")
    ax.legend(fontsize=8)
    ax2.set_xlabel("cosine")
    ax2.set_ylabel("steps")
    ax2.set_title("Distribution over steps")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
