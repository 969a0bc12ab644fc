"""Optional LoRA (Hu et al. 2021) adapters on the backbone, with peft.

With ``lora_r > 0`` the backbone's own weights are frozen and only the low-rank adapters train
(plus any backbone part that starts untrained, such as a bert2bert's cross-attention, and all of
GenSR's own modules). The wrapping is deterministic given the settings, which ``model.json``
keeps, so a run directory rebuilds the same parameter names and reloads exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from gensr.errors import ConfigError, RunError
from gensr.models.gensr.backbones.sources import EXTRA


@dataclass(frozen=True)
class LoraSettings:
    """``r`` = 0 turns LoRA off; ``targets`` empty = every linear layer but the LM head."""

    r: int = 0
    alpha: int = 16
    dropout: float = 0.05
    targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.r < 0:
            raise ConfigError(f"lora_r must be >= 0 (0 = off), got {self.r}")
        if self.r and self.alpha <= 0:
            raise ConfigError(f"lora_alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.dropout}")

    @property
    def enabled(self) -> bool:
        return self.r > 0

    @classmethod
    def from_config(cls, config: Any) -> LoraSettings:
        """The settings of a :class:`~gensr.models.gensr.GenSRConfig` (``lora_*`` fields)."""
        return cls(r=int(config.lora_r), alpha=int(config.lora_alpha),
                   dropout=float(config.lora_dropout), targets=tuple(config.lora_targets))


def apply_lora(model: nn.Module, settings: LoraSettings,
               keep_trainable: tuple[str, ...] = ()) -> nn.Module:
    """``model`` wrapped in peft LoRA adapters; parameters whose name contains one of
    ``keep_trainable`` stay trainable (parts that start untrained)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise RunError(f"lora_r > 0 needs the optional package peft: pip install '{EXTRA}' "
                       "(or pip install peft)") from None
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.targets) or "all-linear", bias="none")
    try:
        wrapped = get_peft_model(model, config)
    except ValueError as err:
        raise ConfigError(f"lora_targets {list(settings.targets) or 'all-linear'}: "
                          f"{str(err).splitlines()[0]}") from None
    for name, param in wrapped.named_parameters():
        if any(part in name for part in keep_trainable):
            param.requires_grad_(True)
    return wrapped
