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
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gensr.errors import ConfigError
from gensr.models.gensr.fused_t5 import FusedT5
from gensr.tensor import resolve_precision

RUNNERS = ("auto", "hf", "fused")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
DROPOUTS = ("auto", "torch", "fast")
CUDA_CHUNK = 4096  # pointwise sequences per backbone call on CUDA (auto)
# ... on CPU (auto): 256 rather than 512: at d_model 64 on a 2-core CPU a call's working set
# then stays in cache, which scored about 15% faster (docs/speed.md)
CPU_CHUNK = 256
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
    ``chunk``: pointwise sequences per backbone call (bounds memory, not results; None:
    256 on CPU, 4096 on CUDA). ``compile``: ``torch.compile`` the
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
        """The original path: the backbone's forward, no buckets, the default chunk, no
        compilation, torch's dropout."""
        return cls(runner="hf", bucket=0, dropout="torch")

    def resolve(self, device: torch.device, fused_ok: bool) -> Speed:
        """Concrete values for ``device`` (``fused_ok``: the backbone is a T5)."""
        cuda = device.type == "cuda"
        runner = self.runner
        if runner == "auto":
            runner = "fused" if fused_ok else "hf"
        elif runner == "fused" and not fused_ok:
            raise ConfigError("speed.runner 'fused' needs a T5-family backbone; use 'hf'")
        bucket = (CUDA_BUCKET if cuda else CPU_BUCKET) if self.bucket is None else self.bucket
        chunk = self.chunk if self.chunk is not None else (CUDA_CHUNK if cuda else CPU_CHUNK)
        dropout = ("torch" if cuda else "fast") if self.dropout == "auto" else self.dropout
        return dataclasses.replace(self, runner=runner, bucket=bucket, chunk=chunk,
                                   dropout=dropout)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class BackboneRunner:
    """How GenSR's backbone pass runs, beside the model rather than inside it: the speed
    levers (:attr:`speed`), the weights' precision, the fused T5 pass, compiled passes and
    length buckets. GenSR asks it for the pass to use (:meth:`logits_fn`) and the groups to
    score in (:meth:`length_groups`); none of it changes what is computed (up to
    floating-point summation order)."""

    def __init__(self, backbone) -> None:
        self.backbone = backbone
        self.speed = Speed()  # runtime levers, not saved
        self._fused: tuple[int, FusedT5 | None] | None = None
        self._compiled: dict[tuple[str, str], Callable] = {}

    # --- precision ---------------------------------------------------------------------------
    @property
    def precision(self) -> str:
        """The backbone weights' precision: ``bf16`` or ``fp32``."""
        dtype = self.backbone.core.get_input_embeddings().weight.dtype
        return "bf16" if dtype == torch.bfloat16 else "fp32"

    def set_precision(self, precision: str, device: torch.device) -> str:
        """Cast the backbone's weights (``bf16``, ``fp32`` or ``auto``: bf16 on a CUDA device
        that supports it) keeping the LM head fp32 (:func:`keep_head_fp32`); returns the
        precision now in effect."""
        resolved = resolve_precision(precision, device)
        self.backbone.to(DTYPES[resolved])
        if resolved == "bf16":
            keep_head_fp32(self.backbone.core)
        return resolved

    # --- the pass ------------------------------------------------------------------------------
    def fused_runner(self) -> FusedT5 | None:
        """The fused T5 pass over the backbone, or None when the backbone is not a T5."""
        from gensr.models.gensr.backbone import Seq2SeqBackbone

        core = self.backbone.core
        if self._fused is None or self._fused[0] != id(core):
            runner = None
            if isinstance(self.backbone, Seq2SeqBackbone) and FusedT5.supports(core):
                runner = FusedT5(core, self.backbone.decoder_start_id)
            self._fused = (id(core), runner)
        return self._fused[1]

    def resolved(self, device: torch.device) -> Speed:
        """:attr:`speed` with its automatic values decided for ``device``."""
        return self.speed.resolve(device, self.fused_runner() is not None)

    def set_dropout(self, speed: Speed, views: tuple) -> None:
        """Switch the views' and the fused pass's dropout masks to ``speed.dropout``."""
        fast = speed.dropout == "fast"
        for view in views:
            view.fast_dropout = fast
        runner = self.fused_runner()
        if runner is not None:
            runner.fast_dropout = fast

    def logits_fn(self, speed: Speed) -> Callable:
        """The backbone pass ``(embeds, mask, shared=…) -> (N, V)`` for ``speed``."""
        key = (speed.runner, speed.compile)
        if key in self._compiled:
            return self._compiled[key]
        if speed.runner == "fused":
            runner = self.fused_runner()
            assert runner is not None
            fn = runner.first_step_logits
        else:
            backbone = self.backbone

            def fn(embeds, mask, *, shared=False):  # the backbone's own forward
                return backbone.first_step_logits(embeds, mask)
        if speed.compile != "off":
            fn = torch.compile(fn, mode=None if speed.compile == "default" else speed.compile)
            self._compiled[key] = fn
        return fn

    # --- length buckets --------------------------------------------------------------------------
    def length_groups(self, enc, speed: Speed) -> list[tuple[torch.Tensor | None, object, bool]]:
        """The instances of a history encoding grouped by prompt length (``speed.bucket``-token
        bands): (rows, their encoding with the prompt cut to the group's longest, whether
        every row has the same mask). One group of all rows (``rows`` None) when buckets are
        off. Padding positions are masked, so a group computes what the whole batch would."""
        if not speed.bucket:
            return [(None, enc, False)]
        lengths = enc.prompt_mask.sum(dim=1).cpu()  # one sync; the grouping is host work
        band = (lengths - 1).div(int(speed.bucket), rounding_mode="floor")
        device = enc.prompt_ids.device
        groups = []
        for value in torch.unique(band).tolist():
            picked = torch.nonzero(band == value).squeeze(1)
            longest = int(lengths[picked].max())
            shared = bool((lengths[picked] == longest).all())
            rows = picked.to(device)
            sub = dataclasses.replace(enc.select(rows), **self._bucket_prompt(
                enc.prompt_ids[rows, :longest], enc.prompt_mask[rows, :longest], speed.pad_to))
            groups.append((rows, sub, shared))
        return groups

    def _bucket_prompt(self, ids: torch.Tensor, mask: torch.Tensor, pad_to: int
                       ) -> dict[str, torch.Tensor]:
        """A bucket's prompt ids and mask, right-padded to a multiple of ``pad_to``."""
        extra = -ids.shape[1] % pad_to
        if extra:
            ids = F.pad(ids, (0, extra), value=self.backbone.pad_id)
            mask = F.pad(mask, (0, extra), value=False)
        return {"prompt_ids": ids, "prompt_mask": mask}


def keep_head_fp32(core: nn.Module) -> None:
    """Run ``core``'s LM head in fp32 while the rest of it is bf16: the head's weights are
    cast (untied from the input embeddings first when they share them, so the embeddings
    stay bf16) and a hook casts its input to the head's dtype."""
    head = core.get_output_embeddings()
    if head is None:
        return
    shared = core.get_input_embeddings()
    if shared is not None and head.weight.data_ptr() == shared.weight.data_ptr():
        head.weight = nn.Parameter(head.weight.detach().float().clone(),
                                   requires_grad=head.weight.requires_grad)
    head.float()
    if not getattr(head, "_gensr_cast_hook", False):
        head.register_forward_pre_hook(
            lambda module, args: (args[0].to(module.weight.dtype), *args[1:]))
        head._gensr_cast_hook = True
