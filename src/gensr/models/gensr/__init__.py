"""GenSR: the model, one module per part of the paper (§4)."""

from gensr.models.gensr.configuration import GenSRConfig
from gensr.models.gensr.modeling import GenSR, info_nce
from gensr.models.gensr.prompt import PromptBuilder, PromptTemplate
from gensr.models.gensr.soft_filter import SoftFilter
from gensr.models.gensr.views import CFView, SemanticView

__all__ = ["CFView", "GenSR", "GenSRConfig", "PromptBuilder", "PromptTemplate", "SemanticView",
           "SoftFilter", "info_nce"]
