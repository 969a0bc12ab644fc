"""GenSR's backbone: one interface, a seq2seq and a decoder-only adapter, and their loading.

GenSR needs four things from its backbone (:class:`Backbone`): the tokenizer with the ids of
the answers' first tokens, the input embedding table (for the semantic view and the prompt
text), the ids that pad and end a prompt, and ``first_step_logits(inputs_embeds,
attention_mask) -> (N, V)``: the vocabulary logits of the step that answers the prompt —

* :class:`Seq2SeqBackbone` (T5, BART, bert2bert ``EncoderDecoderModel``): one encoder pass over
  the prompt and one decoder step from the decoder start token;
* :class:`CausalLMBackbone` (Llama, Qwen, SmolLM, GPT-2 …): one pass over the prompt, the
  next-token logits after each row's last real token (prompts are right-padded, so the real
  tokens never see the padding under causal attention, and position ids are plain).

No ``generate``. :func:`load_backbone` picks the adapter from the model's config
(``is_encoder_decoder``). ``scratch-t5`` builds a small T5 from a config with a WordPiece
tokenizer whose vocabulary is built from the data's text — **not pretrained**, for offline
use, tests and the quickstart. Pretrained sources (hub names, directories, GGUF files,
``bert2bert:NAME``, the named backbones of optional packages) are resolved in
:mod:`gensr.models.gensr.backbones`.

A run directory keeps the backbone's config, tokenizer, kind and weight tying
(``backbone/gensr_backbone.json``); the weights live in ``model.safetensors``. So a trained
run reloads offline and exactly, whatever the backbone was, LoRA adapters included.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from gensr.errors import ConfigError, RunError, damaged
from gensr.files import first_line, read_json
from gensr.models.base import RUN_AGAIN
from gensr.models.gensr.backbones.lora import LoraSettings, apply_lora
from gensr.models.gensr.backbones.sources import (
    load_pretrained,
    quiet_transformers,
    resolve_source,
)
from gensr.outputs import write_atomic, write_folder_atomic

SCRATCH = "scratch-t5"
BACKBONE_CARD = "gensr_backbone.json"  # kind + tying, in RUN_DIR/backbone/
SPECIALS = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}


_PRINTABLE_ASCII = r"^[\x20-\x7e]*$"
_ASCII_WORD = r"[a-z0-9]+|[^a-z0-9 ]"  # BERT's words: letter/digit runs, single punctuation


def word_counts(texts: list[str], normalizer, pre_tokenizer) -> Counter[str]:
    """How often each word of ``texts`` occurs after BERT normalisation (lower case, accents
    stripped) and pre-tokenisation (split at whitespace and punctuation).

    Texts of printable ASCII only (all of KuaiSAR's, most of Amazon's) are counted in bulk
    by polars, where the two steps reduce to lower-casing and taking runs of letters and
    digits and single punctuation marks; the other texts go through ``normalizer`` and
    ``pre_tokenizer`` one by one. Same counts either way (tested), much faster for millions
    of item texts."""
    import polars as pl

    series = pl.Series(texts, dtype=pl.Utf8)
    ascii_only = series.str.contains(_PRINTABLE_ASCII)
    counts: Counter[str] = Counter()
    words = (series.filter(ascii_only).str.to_lowercase().str.extract_all(_ASCII_WORD)
             .explode().drop_nulls())
    if len(words):
        counts.update(dict(words.value_counts().iter_rows()))
    for text in series.filter(~ascii_only).to_list():
        counts.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    return counts


def train_wordpiece(texts: list[str], vocab_size: int, extra_words: list[str]):
    """A lower-casing WordPiece tokenizer whose vocabulary is built from ``texts``.

    Deterministic by construction (🤗 ``tokenizers``' trainers break ties in hash order, so
    two processes can learn different vocabularies from the same corpus, which would break
    resuming a run): the special tokens, every character seen (alone and as a ``##``
    continuation), ``extra_words``, then whole words by descending frequency (ties in
    alphabetical order) up to ``vocab_size``. Rarer words are spelled out in characters.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts = word_counts(texts, normalizer, pre_tokenizer)
    chars = sorted({c for w in counts for c in w})
    vocab: dict[str, int] = {}
    for token in [SPECIALS["pad_token"], SPECIALS["eos_token"], SPECIALS["unk_token"], *chars,
                  *(f"##{c}" for c in chars), *extra_words]:
        vocab.setdefault(token, len(vocab))
    for word, _ in sorted(counts.items(), key=lambda wc: (-wc[1], wc[0])):
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab, unk_token=SPECIALS["unk_token"],
                                     max_input_chars_per_word=100))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIALS)


def _untie_lm_head(model: nn.Module) -> None:
    """Give T5's LM head its own weights (flan-t5 / T5 v1.1 style).

    Recent transformers tie ``lm_head`` to the shared embedding for every T5 built from a
    config, whatever ``tie_word_embeddings`` asked for; check the storage and copy it apart.
    """
    head, shared = model.get_output_embeddings(), model.get_input_embeddings()
    if head.weight.data_ptr() == shared.weight.data_ptr():
        head.weight = nn.Parameter(shared.weight.detach().clone())
    model.config.tie_word_embeddings = False
    if head.weight.data_ptr() == shared.weight.data_ptr():  # pragma: no cover - defensive
        raise RunError("could not untie the T5 LM head from the input embeddings")


def scratch_t5(vocab_size: int, pad_id: int, eos_id: int, *, d_model: int, layers: int,
               decoder_layers: int, heads: int, d_ff: int, dropout: float):
    """A small T5 (v1.1 layout: gated-gelu, untied LM head, no output scaling), random init."""
    from transformers import T5Config, T5ForConditionalGeneration

    if d_model % heads:
        raise RunError(f"scratch_d_model {d_model} is not divisible by scratch_heads {heads}")
    config = T5Config(
        vocab_size=vocab_size, d_model=d_model, d_kv=d_model // heads, d_ff=d_ff,
        num_layers=layers, num_decoder_layers=decoder_layers, num_heads=heads,
        dropout_rate=dropout, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
        pad_token_id=pad_id, eos_token_id=eos_id, decoder_start_token_id=pad_id,
    )
    model = T5ForConditionalGeneration(config)
    _untie_lm_head(model)
    # T5 initialises an untied head with std 1, which gives logits of std ≈ √d_model at the
    # start; scale it like the tied head (d_model^-0.5) so training starts near uniform.
    with torch.no_grad():
        model.get_output_embeddings().weight.normal_(0.0, d_model**-0.5)
    return model


# --- weight tying, recorded by name so a run directory rebuilds it exactly -------------------
def tied_groups(model: nn.Module) -> list[list[str]]:
    """Names of parameters that share one tensor (e.g. an LM head tied to its embeddings)."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _set_parameter(model: nn.Module, name: str, param: nn.Parameter) -> None:
    owner, _, attr = name.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, attr, param)


def restore_tying(model: nn.Module, groups: list[list[str]]) -> None:
    """Make ``model`` share exactly the parameters of ``groups`` (as :func:`tied_groups` wrote
    them) and nothing else: models built from a config may tie more or less than the run did."""
    leader = {name: names[0] for names in groups for name in names}
    params = list(model.named_parameters(remove_duplicate=False))
    known = {name for name, _ in params}
    missing = sorted(set(leader) - known)
    if missing:
        raise RunError(f"backbone tying names parameters the model does not have: {missing[:3]}")
    owner: dict[int, str] = {}
    leaders: dict[str, nn.Parameter] = {}
    for name, param in params:
        if leader.get(name, name) != name:
            continue
        if id(param) in owner:  # tied now, but not in the run: give it its own copy
            param = nn.Parameter(param.detach().clone(), requires_grad=param.requires_grad)
            _set_parameter(model, name, param)
        owner[id(param)] = name
        leaders[name] = param
    for name, _ in params:
        lead = leader.get(name, name)
        if lead != name:
            _set_parameter(model, name, leaders[lead])


# --- the interface -----------------------------------------------------------------------
class Backbone(nn.Module, ABC):
    """What GenSR uses of a pretrained (or scratch) language model.

    ``tokenizer``; ``yes_id`` / ``no_id`` (the first token of each answer: P(answer) is
    P(its first token) at the answering step); ``d_model`` (the input embedding width);
    ``pad_id``; ``eos_id`` (the token that ends a prompt, or None); ``embed(ids)`` (input
    embeddings); ``first_step_logits(inputs_embeds, attention_mask) -> (N, V)`` for
    right-padded prompts; ``save(dir)`` (config, tokenizer, kind and tying into a run dir);
    for the analyses, ``encoder_states(inputs_embeds, attention_mask) -> (N, T, d)`` and
    ``first_self_attention()``. ``model`` is the Hugging Face model, wrapped by peft when
    LoRA is on (``core`` unwraps it).
    """

    kind: ClassVar[str] = ""

    def __init__(self, model: nn.Module, tokenizer: Any, answer_yes: str, answer_no: str, *,
                 fresh: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.fresh = tuple(fresh)  # parts that started untrained (kept trainable under LoRA)
        self._check_pad()
        self.yes_id = self._answer_id(answer_yes)
        self.no_id = self._answer_id(answer_no)
        if self.yes_id == self.no_id:
            raise RunError(f"answers {answer_yes!r} and {answer_no!r} start with the same token")

    def _check_pad(self) -> None:
        if self.tokenizer.pad_token_id is None:
            raise RunError("the backbone's tokenizer has no pad token")

    def _answer_id(self, answer: str) -> int:
        ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        if not ids:
            raise RunError(f"answer {answer!r} tokenizes to nothing")
        return int(ids[0])  # P(answer) = P(its first token) at the answering step

    @property
    def core(self) -> nn.Module:
        """The Hugging Face model under any peft wrapping."""
        if self.lora_enabled:
            return self.model.get_base_model()  # type: ignore[operator]
        return self.model

    @property
    def lora_enabled(self) -> bool:
        return getattr(self.model, "peft_config", None) is not None and hasattr(
            self.model, "get_base_model")

    @property
    def d_model(self) -> int:
        return int(self.core.get_input_embeddings().weight.shape[1])

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def eos_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of token ids (the table the semantic view and prompt share)."""
        return self.core.get_input_embeddings()(ids)

    @abstractmethod
    def first_step_logits(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor
                          ) -> torch.Tensor:
        """Vocabulary logits (N, V) of the step that answers each right-padded prompt."""

    @abstractmethod
    def encoder_states(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor
                       ) -> torch.Tensor:
        """The last hidden states (N, T, d) over the prompt (the analyses read them)."""

    def first_self_attention(self) -> list[tuple[str, nn.Parameter]]:
        """Parameters of the model's first self-attention module (T5 ``SelfAttention``,
        BERT ``attention.self``, BART/Llama-style ``self_attn``), LoRA adapters included."""
        for name, module in self.core.named_modules():
            if name.endswith(("SelfAttention", "attention.self", "self_attn")):
                params = [(f"{name}.{n}", p) for n, p in module.named_parameters()]
                if params:
                    return params
        raise RunError("no self-attention block found in the backbone")

    @property
    def lm_head_tied(self) -> bool:
        """Whether the LM head shares storage with the input embeddings."""
        core = self.core
        head = core.get_output_embeddings()
        return head is not None and (
            head.weight.data_ptr() == core.get_input_embeddings().weight.data_ptr())

    def save(self, directory: Path) -> None:
        """Write the backbone's config, tokenizer, kind and tying (weights: model.safetensors)."""
        core = self.core  # every file renamed into place whole (as model.safetensors)
        write_folder_atomic(directory / "backbone", core.config.save_pretrained, None)
        write_folder_atomic(directory / "tokenizer", self.tokenizer.save_pretrained, None)
        card = {"kind": self.kind, "lm_head_tied": self.lm_head_tied,
                "tying": tied_groups(core), "fresh": list(self.fresh)}
        write_atomic(directory / "backbone" / BACKBONE_CARD, json.dumps(card, indent=2), None)


class Seq2SeqBackbone(Backbone):
    """An encoder-decoder LM: P(answer) from one encoder pass and one decoder step."""

    kind = "seq2seq"

    def __init__(self, model: nn.Module, tokenizer: Any, answer_yes: str, answer_no: str, *,
                 fresh: tuple[str, ...] = ()) -> None:
        super().__init__(model, tokenizer, answer_yes, answer_no, fresh=fresh)
        start = getattr(self.core.config, "decoder_start_token_id", None)
        if start is None:
            start = tokenizer.pad_token_id
        if start is None:
            raise RunError("the backbone has no decoder_start_token_id and no pad token")
        self.decoder_start_id = int(start)

    @property
    def eos_id(self) -> int | None:
        """``</s>``, or BERT's ``[SEP]`` (the end of a BERT input) when there is no eos."""
        eos = self.tokenizer.eos_token_id
        return eos if eos is not None else getattr(self.tokenizer, "sep_token_id", None)

    def first_step_logits(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor
                          ) -> torch.Tensor:
        """Vocabulary logits of the first decoder step: one encoder pass, one decoder step."""
        start = torch.full((inputs_embeds.shape[0], 1), self.decoder_start_id,
                           dtype=torch.long, device=inputs_embeds.device)
        out = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask.long(),
                         decoder_input_ids=start, use_cache=False)
        return out.logits[:, 0]

    def encoder_states(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor
                       ) -> torch.Tensor:
        """The encoder's last hidden states (N, T, d) for prompt embeddings."""
        encoder = self.core.get_encoder()
        return encoder(inputs_embeds=inputs_embeds,
                       attention_mask=attention_mask.long()).last_hidden_state


# configs whose models change the logits after the LM head: score those with the full forward
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling")


class CausalLMBackbone(Backbone):
    """A decoder-only LM: P(answer) from the next-token logits after the prompt's last token.

    The prompt is not ended with an eos token (``eos_id`` is None): the answer follows it.
    A tokenizer without a pad token pads with its eos token (padding is masked anyway).
    """

    kind = "causal"

    def _check_pad(self) -> None:
        if self.tokenizer.pad_token_id is None:
            if self.tokenizer.eos_token is None:
                raise RunError("the decoder-only backbone's tokenizer has neither a pad nor an "
                               "eos token to pad with")
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @property
    def eos_id(self) -> int | None:
        return None

    def _base_and_head(self) -> tuple[nn.Module, nn.Module] | None:
        core = self.core
        base, head = getattr(core, "base_model", None), core.get_output_embeddings()
        if base is None or base is core or head is None:
            return None
        if any(getattr(core.config, key, None) for key in _LOGIT_POSTPROCESSING):
            return None
        return base, head

    def first_step_logits(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor
                          ) -> torch.Tensor:
        """Next-token logits after each row's last real token; the head runs on those rows only
        (or, for models that post-process logits, on the few distinct last positions)."""
        mask = attention_mask.bool()
        n, t = mask.shape
        last = mask.long().sum(dim=1) - 1
        if (last < 0).any():
            raise RunError("an empty prompt (all padding) reached the decoder-only backbone")
        positions = torch.arange(t, device=mask.device)
        if not torch.equal(positions[None, :] <= last[:, None], mask):
            raise RunError("decoder-only backbones need right-padded prompts (real tokens first)")
        rows = torch.arange(n, device=mask.device)
        parts = self._base_and_head()
        if parts is not None:
            base, head = parts
            hidden = base(inputs_embeds=inputs_embeds, attention_mask=mask.long(),
                          use_cache=False).last_hidden_state
            return head(hidden[rows, last])
        keep = torch.unique(last)  # sorted distinct last positions
        out = self.model(inputs_embeds=inputs_embeds, attention_mask=mask.long(),
                         use_cache=False, logits_to_keep=keep)
        return out.logits[rows, torch.searchsorted(keep, last)]

    def encoder_states(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor
                       ) -> torch.Tensor:
        """The decoder stack's last hidden states (N, T, d) over the prompt (a decoder-only
        LM has no separate encoder: these are the states its next-token logits read)."""
        parts = self._base_and_head()
        if parts is not None:
            return parts[0](inputs_embeds=inputs_embeds, attention_mask=attention_mask.long(),
                            use_cache=False).last_hidden_state
        out = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask.long(),
                         use_cache=False, output_hidden_states=True, logits_to_keep=1)
        return out.hidden_states[-1]


BACKBONES: dict[str, type[Backbone]] = {"seq2seq": Seq2SeqBackbone, "causal": CausalLMBackbone}


# --- loading -------------------------------------------------------------------------------
def check_json_files(folder: Path) -> None:
    """Read every JSON file a run directory saved in ``folder`` (the backbone's config and
    card, the tokenizer's files) through :func:`gensr.files.read_json`, so that a damaged
    one is the one-line error naming it, not the libraries' parser tracebacks."""
    for path in sorted(folder.glob("*.json")):
        read_json(path, RunError, expect=None, hint=RUN_AGAIN)


def load_run_tokenizer(folder: Path) -> Any:
    """The tokenizer a run directory saved in ``folder``, offline; a damaged file is one line
    naming it (a JSON file), or naming the folder (a file only the tokenizer can parse)."""
    from transformers import AutoTokenizer

    if not folder.is_dir():
        raise RunError(f"{folder} is missing: the run's tokenizer (an incomplete or damaged "
                       "run)")
    check_json_files(folder)
    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception as err:  # sentencepiece, tokenizers and transformers raise their own
        raise damaged(folder, "tokenizer folder", first_line(err), RunError,
                      RUN_AGAIN) from None


def _from_run_dir(artifacts: Path, answer_yes: str, answer_no: str,
                  lora: LoraSettings) -> Backbone:
    """The backbone of a run directory, offline: config + tokenizer + kind + tying (weights
    come from model.safetensors afterwards)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    folder = artifacts / "backbone"
    card_path = folder / BACKBONE_CARD
    if not card_path.is_file():
        raise RunError(f"{card_path} is missing: the backbone's kind and weight tying (an "
                       "incomplete or damaged run)")
    check_json_files(folder)
    card = read_json(card_path, RunError, hint=RUN_AGAIN)
    if card.get("kind") not in BACKBONES:
        raise RunError(f"{card_path}: unknown backbone kind {card.get('kind')!r}")
    tokenizer = load_run_tokenizer(artifacts / "tokenizer")
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as err:
        raise RunError(f"{folder / 'config.json'}: not a backbone config "
                       f"({first_line(err)}); {RUN_AGAIN}") from None
    cls = AutoModelForSeq2SeqLM if card["kind"] == "seq2seq" else AutoModelForCausalLM
    with quiet_transformers():
        model = cls.from_config(config, dtype=torch.float32)
    fresh = tuple(card.get("fresh", ()))
    if lora.enabled:
        model = apply_lora(model, lora, fresh)
    backbone = BACKBONES[card["kind"]](model, tokenizer, answer_yes, answer_no, fresh=fresh)
    if "tying" in card:
        restore_tying(backbone.core, card["tying"])
    return backbone


def load_backbone(name: str, *, artifacts: Path | None, corpus: list[str] | None,
                  answer_yes: str, answer_no: str, scratch: dict, gguf_file: str = "",
                  lora: LoraSettings | None = None) -> Backbone:
    """The backbone of a run directory (offline), a scratch T5, or a pretrained model (hub
    name, local directory, GGUF file, ``bert2bert:NAME`` or a named backbone), optionally
    with LoRA adapters."""
    lora = lora or LoraSettings()
    if artifacts is not None:  # a run directory: everything from it, never from the hub
        if not (artifacts / "backbone" / "config.json").is_file():
            raise RunError(f"{artifacts / 'backbone' / 'config.json'} is missing: a run "
                           "directory's backbone loads offline from it (an incomplete or "
                           "damaged run)")
        return _from_run_dir(artifacts, answer_yes, answer_no, lora)
    if name == SCRATCH:
        if gguf_file:
            raise ConfigError("backbone_gguf_file needs a pretrained backbone, not scratch-t5")
        if corpus is None:
            raise RunError("a scratch backbone needs the data's text to train its tokenizer")
        tokenizer = train_wordpiece(corpus, scratch["vocab_size"],
                                    extra_words=[answer_yes.lower(), answer_no.lower()])
        model = scratch_t5(
            len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id,
            d_model=scratch["d_model"], layers=scratch["layers"],
            decoder_layers=scratch["decoder_layers"], heads=scratch["heads"],
            d_ff=scratch["d_ff"], dropout=scratch["dropout"],
        )
        if lora.enabled:
            model = apply_lora(model, lora)
        return Seq2SeqBackbone(model, tokenizer, answer_yes, answer_no)
    model, tokenizer, kind, fresh = load_pretrained(resolve_source(name, gguf_file))
    if lora.enabled:
        model = apply_lora(model, lora, fresh)
    return BACKBONES[kind](model, tokenizer, answer_yes, answer_no, fresh=fresh)
