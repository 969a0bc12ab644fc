"""How GenSR runs its scoring pass: the speed levers, each switchable (docs/speed.md).

:class:`Speed` holds the levers that change how fast GenSR scores, not what it computes
(up to floating-point summation order). ``"auto"``/``None`` values resolve against the
device at call time (:meth:`Speed.resolve`): the fused T5 pass and length buckets on every
device (8-token bands on CUDA, 2-token bands on CPU); :meth:`Speed.plain` is the original path.
The weights' precision (bf16 or fp32) is not a lever here but a state of the model
(:meth:`GenSR.set_precision`), set where a model is loaded for inference.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from gensr.errors import ConfigError

RUNNERS = ("auto", "hf", "fused")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
DROPOUTS = ("auto", "torch", "fast")
CUDA_CHUNK = 4096  # pointwise sequences per backbone call on CUDA (auto)
CUDA_BUCKET = 8  # prompt-length band of a bucket on CUDA (auto), in tokens
CPU_BUCKET = 2  # on CPU (auto): groups of prompts within 2 tokens of length (little padding)


@dataclass(frozen=True)
class Speed:
    """GenSR's speed levers.

    ``runner``: ``hf`` = the backbone's own forward; ``fused`` = :class:`FusedT5` (T5
    backbones: one attention bias per batch, SDPA, a specialised first decoder step);
    ``auto`` = fused when the backbone is a T5, else hf.
    ``bucket``: score instances grouped by prompt length — instances whose lengths fall in the
    same ``bucket``-token band are scored together, padded to the band's longest prompt (a
    band of equal lengths shares one mask, broadcast over its rows); 0 = off, None = 8 on
    CUDA, 2 on CPU; training uses the same groups (GenSR.loss). ``pad_to``: pad each
    bucket's prompts to a multiple of this many
    positions (16 keeps the bias aligned for CUDA's memory-efficient attention, which
    otherwise pads and materialises it; costs the extra positions); 1 = no padding.
    ``chunk``: pointwise sequences per backbone call (None: the config's
    ``score_chunk`` on CPU, at least 4096 on CUDA). ``compile``: ``torch.compile`` the
    backbone pass with this mode (``reduce-overhead`` = CUDA graphs); off by default.
    ``dropout`` (training only): ``fast`` = the dropout masks of the views and of the fused
    T5 pass drawn by :func:`gensr.tensor.dropout` (16 PCG64 bits per element, about 5x
    faster than torch's single-threaded ``bernoulli_`` on CPU; other masks than torch's, so
    a seeded run differs); ``torch`` = torch's own; ``auto`` = fast on CPU, torch on CUDA.
    """

    runner: str = "auto"
    bucket: int | None = None
    pad_to: int = 1
    chunk: int | None = None
    compile: str = "off"
    dropout: str = "auto"

    def __post_init__(self) -> None:
        for name, allowed in (("runner", RUNNERS), ("compile", COMPILE_MODES),
                              ("dropout", DROPOUTS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"speed.{name} must be one of {list(allowed)}, "
                                  f"got {getattr(self, name)!r}")
        if self.chunk is not None and self.chunk < 1:
            raise ConfigError(f"speed.chunk must be >= 1 or None, got {self.chunk}")
        if self.pad_to < 1:
            raise ConfigError(f"speed.pad_to must be >= 1, got {self.pad_to}")
        if self.bucket is not None and self.bucket < 0:
            raise ConfigError(f"speed.bucket must be >= 0 or None, got {self.bucket}")

    @classmethod
    def plain(cls) -> Speed:
        """The original path: the backbone's forward, no buckets, the config's chunk, no
        compilation, torch's dropout."""
        return cls(runner="hf", bucket=0, dropout="torch")

    def resolve(self, device: torch.device, score_chunk: int, fused_ok: bool) -> Speed:
        """Concrete values for ``device`` (``fused_ok``: the backbone is a T5)."""
        cuda = device.type == "cuda"
        runner = self.runner
        if runner == "auto":
            runner = "fused" if fused_ok else "hf"
        elif runner == "fused" and not fused_ok:
            raise ConfigError("speed.runner 'fused' needs a T5-family backbone; use 'hf'")
        bucket = (CUDA_BUCKET if cuda else CPU_BUCKET) if self.bucket is None else self.bucket
        chunk = self.chunk if self.chunk is not None else (
            max(score_chunk, CUDA_CHUNK) if cuda else score_chunk)
        dropout = ("torch" if cuda else "fast") if self.dropout == "auto" else self.dropout
        return dataclasses.replace(self, runner=runner, bucket=bucket, chunk=chunk,
                                   dropout=dropout)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
