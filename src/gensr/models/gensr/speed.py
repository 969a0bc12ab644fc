"""How GenSR runs its scoring pass: the speed levers, each switchable (docs/speed.md).

:class:`Speed` holds the levers that change how fast GenSR scores, not what it computes
(up to floating-point summation order). ``"auto"``/``None`` values resolve against the
device at call time (:meth:`Speed.resolve`): the fast path on CUDA, the original path on CPU.
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
CUDA_CHUNK = 4096  # pointwise sequences per backbone call on CUDA (auto)
CUDA_BUCKET = 8  # prompt-length band of a bucket on CUDA (auto), in tokens


@dataclass(frozen=True)
class Speed:
    """GenSR's speed levers.

    ``runner``: ``hf`` = the backbone's own forward; ``fused`` = :class:`FusedT5` (T5
    backbones: one attention bias per batch, SDPA, a specialised first decoder step);
    ``auto`` = fused on CUDA when the backbone is a T5, else hf.
    ``bucket``: score instances grouped by prompt length — instances whose lengths fall in the
    same ``bucket``-token band are scored together, padded to the band's longest prompt (a
    band of equal lengths shares one mask, broadcast over its rows); 0 = off, None = 8 on
    CUDA, off on CPU. ``pad_to``: pad each bucket's prompts to a multiple of this many
    positions (16 keeps the bias aligned for CUDA's memory-efficient attention, which
    otherwise pads and materialises it; costs the extra positions); 1 = no padding.
    ``chunk``: pointwise sequences per backbone call (None: the config's
    ``score_chunk`` on CPU, at least 4096 on CUDA). ``compile``: ``torch.compile`` the
    backbone pass with this mode (``reduce-overhead`` = CUDA graphs); off by default.
    """

    runner: str = "auto"
    bucket: int | None = None
    pad_to: int = 1
    chunk: int | None = None
    compile: str = "off"

    def __post_init__(self) -> None:
        for name, allowed in (("runner", RUNNERS), ("compile", COMPILE_MODES)):
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
        compilation."""
        return cls(runner="hf", bucket=0)

    def resolve(self, device: torch.device, score_chunk: int, fused_ok: bool) -> Speed:
        """Concrete values for ``device`` (``fused_ok``: the backbone is a T5)."""
        cuda = device.type == "cuda"
        runner = self.runner
        if runner == "auto":
            runner = "fused" if cuda and fused_ok else "hf"
        elif runner == "fused" and not fused_ok:
            raise ConfigError("speed.runner 'fused' needs a T5-family backbone; use 'hf'")
        bucket = (CUDA_BUCKET if cuda else 0) if self.bucket is None else self.bucket
        chunk = self.chunk if self.chunk is not None else (
            max(score_chunk, CUDA_CHUNK) if cuda else score_chunk)
        return dataclasses.replace(self, runner=runner, bucket=bucket, chunk=chunk)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
