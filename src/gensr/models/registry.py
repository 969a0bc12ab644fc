"""Model names -> classes. ``gensr train --model NAME`` and ``compare`` look models up here."""

from __future__ import annotations

from importlib import import_module

from gensr.errors import ConfigError
from gensr.models.base import SRModel

# name -> "module:Class" (imported lazily so `gensr --help` stays fast)
MODELS: dict[str, str] = {
    "random": "gensr.models.baselines.reference:RandomScorer",
    "pop": "gensr.models.baselines.reference:PopularityScorer",
    "bm25": "gensr.models.baselines.reference:BM25Scorer",
    "gensr": "gensr.models.gensr.modeling:GenSR",
    "lightgcn": "gensr.models.baselines.lightgcn:LightGCNScorer",
    "sasrec": "gensr.models.baselines.sasrec:SASRec",
    "tem": "gensr.models.baselines.tem:TEM",
    "unisar": "gensr.models.baselines.unisar:UniSAR",
    "disc": "gensr.models.baselines.disc:DiscriminativeTwin",
}


def model_class(name: str) -> type[SRModel]:
    """The class registered under ``name``."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(MODELS)}")
    module, _, cls = MODELS[name].partition(":")
    return getattr(import_module(module), cls)
