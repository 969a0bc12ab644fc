"""GenSR and the baselines, all behind :class:`gensr.models.base.SRModel`.

The registry (``MODELS``, ``model_class``) is imported on first use, so importing one model
module never loads it: models sit below the registry, never beside it.
"""

from gensr.models.base import ModelConfig, ModelOutput, SRModel

__all__ = ["MODELS", "ModelConfig", "ModelOutput", "SRModel", "model_class"]


def __getattr__(name: str):
    if name in ("MODELS", "model_class"):
        from gensr.models import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'gensr.models' has no attribute {name!r}")
