"""Small torch helpers that every part of gensr may use: models, ``cf``, ``train``, ``eval``.

It imports nothing from gensr but :mod:`gensr.errors`, so using it never points upward (a
model importing :mod:`gensr.runs` would import the model registry): the device and precision
choice, masked means and softmaxes, and dropping the leading columns that are padding in
every row of a left-padded batch.
"""

from __future__ import annotations

import torch

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
