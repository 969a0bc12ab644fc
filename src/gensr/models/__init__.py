"""GenSR and the baselines, all behind :class:`gensr.models.base.SRModel`."""

from gensr.models.base import ModelConfig, ModelOutput, SRModel
from gensr.models.registry import MODELS, model_class

__all__ = ["MODELS", "ModelConfig", "ModelOutput", "SRModel", "model_class"]
