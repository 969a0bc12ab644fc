"""Small torch helpers that every part of gensr may use: models, ``cf``, ``train``, ``eval``.

It imports nothing from gensr but :mod:`gensr.errors`, so using it never points upward (a
model importing :mod:`gensr.runs` would import the model registry): the device and precision
choice, masked means and softmaxes, and dropping the leading columns that are padding in
every row of a left-padded batch; and a CPU dropout whose mask is drawn fast.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from gensr.errors import ConfigError, RunError

PRECISIONS = ("auto", "fp32", "bf16")


def pick_device(device: str | None = None) -> torch.device:
    """``device`` or, when None, CUDA if available else CPU (with a clear error for bad names)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise RunError(f"unknown device {device!r} (use cpu or cuda)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda asked for, but CUDA is not available here")
    return dev


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto`` -> ``bf16`` on a CUDA device that supports it, else ``fp32``."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    if precision != "auto":
        return precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` (..., T, d) over positions where ``mask`` (..., T) is True (0 if none)."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(-2) / m.sum(-2).clamp(min=1.0)


def masked_softmax(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax of ``scores`` over the last dimension, only where ``allowed`` (broadcast to
    ``scores``) is True; a row with nothing allowed gets all-zero weights, never NaN."""
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)


def leading_padding(valid: torch.Tensor, keep: int = 1) -> int:
    """How many leading columns of ``valid`` (B, L) are False in every row, leaving at least
    ``keep`` columns (histories are left-padded: dropping them changes no result)."""
    n = valid.shape[1]
    filled = valid.any(0)
    first = int(filled.nonzero()[0]) if bool(filled.any()) else n
    return max(min(first, n - keep), 0)


def drop_leading_padding(valid: torch.Tensor, *tensors: torch.Tensor, keep: int = 1
                         ) -> tuple[torch.Tensor, ...]:
    """``tensors`` (B, L, ...) without the leading columns that are padding in every row of
    ``valid`` (B, L) (:func:`leading_padding`)."""
    start = leading_padding(valid, keep)
    return tuple(t[:, start:] for t in tensors)


def dropout(x: torch.Tensor, p: float, training: bool, fast: bool = True) -> torch.Tensor:
    """Inverted dropout: each element zeroed with probability ``p``, the rest scaled by
    1/(1-p); ``x`` itself when not ``training`` or ``p`` is 0.

    ``fast`` (CPU only; elsewhere :func:`torch.nn.functional.dropout` is used): the keep mask
    comes from 16 random bits per element drawn by NumPy's PCG64, seeded for each call by one
    draw of torch's default generator (so ``torch.manual_seed`` fixes the masks). On CPUs
    where torch's own ``bernoulli_`` runs single-threaded on mt19937 (every non-Intel CPU),
    this is about 5x faster at GenSR's sizes. The drop probability is ``p`` rounded to a
    multiple of 1/65536 (0.1 -> 0.100006); the masks differ from torch's, so a seeded run
    trains on other masks than with ``fast=False``.
    """
    if not training or p == 0.0:
        return x
    if not fast or x.device.type != "cpu" or not 0.0 < p < 1.0:
        return F.dropout(x, p, training=True)
    n = x.numel()
    seed = int(torch.randint(0, 2**62, (1,)).item())
    words = np.random.PCG64(seed).random_raw((n + 3) // 4)  # 4 x 16 bits per word
    bits = torch.from_numpy(words.view(np.int16)[:n]).view(x.shape).float()
    # keep where bits >= threshold (P = 1 - p over uniform int16): bits are integers, so
    # bits - (threshold - 1) clamped to [0, 1] is exactly 1 there and 0 elsewhere
    threshold = round(p * 65536) - 32768
    keep = bits.sub_(threshold - 1).clamp_(0.0, 1.0).mul_(1.0 / (1.0 - p))
    return x * (keep if x.dtype == torch.float32 else keep.to(x.dtype))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
              *, scale: float, p: float = 0.0, fast_dropout: bool = False) -> torch.Tensor:
    """softmax(q·kᵀ·scale + mask)·v over (..., T, d) heads, dropout ``p`` on the weights.

    SDPA (:func:`torch.nn.functional.scaled_dot_product_attention`), except in two cases,
    where SDPA's math is written out: when ``p`` > 0 and ``fast_dropout`` is on (the weights
    dropped by :func:`dropout`, fast on CPU; SDPA's own dropout draws through
    ``bernoulli_``), and on CPU when no gradient is needed (at GenSR's head size of 16 and prompts
    of 10-30 positions, SDPA's CPU flash kernel takes about twice as long as the three
    written-out steps; results agree to rounding, ~2e-6)."""
    no_grad = not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad
                                                 or v.requires_grad))
    if (p > 0 and fast_dropout) or (q.device.type == "cpu" and no_grad and p == 0):
        scores = (q @ k.transpose(-1, -2)) * scale if scale != 1.0 else q @ k.transpose(-1, -2)
        if mask is not None:
            scores = scores + mask
        weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        return (dropout(weights, p, True) if p > 0 else weights) @ v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, scale=scale)
