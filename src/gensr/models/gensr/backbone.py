"""The seq2seq backbone: loading by hub name or local directory, or a small scratch T5.

GenSR needs three things from its backbone: the tokenizer, the input embedding table (for
the semantic view and the prompt text), and the logits of the first decoder step given
``inputs_embeds`` (P("Yes") from one encoder pass and one decoder step, no ``generate``).

``scratch-t5`` builds a small T5 from a config with a WordPiece tokenizer whose vocabulary
is built from the data's text — **not pretrained**, for offline use, tests and the
quickstart. A run directory keeps the backbone's config and tokenizer, so a trained run
reloads offline whatever the backbone was.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from gensr.errors import RunError

SCRATCH = "scratch-t5"
SPECIALS = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}


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
    counts: Counter[str] = Counter()
    for text in texts:
        words = pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
        counts.update(w for w, _ in words)
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


class Seq2SeqBackbone(nn.Module):
    """A Hugging Face encoder-decoder LM with its tokenizer and the answer token ids."""

    def __init__(self, model: nn.Module, tokenizer, answer_yes: str, answer_no: str) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.yes_id = self._answer_id(answer_yes)
        self.no_id = self._answer_id(answer_no)
        if self.yes_id == self.no_id:
            raise RunError(f"answers {answer_yes!r} and {answer_no!r} start with the same token")
        start = getattr(model.config, "decoder_start_token_id", None)
        if start is None:
            start = tokenizer.pad_token_id
        if start is None:
            raise RunError("the backbone has no decoder_start_token_id and no pad token")
        self.decoder_start_id = int(start)

    def _answer_id(self, answer: str) -> int:
        ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        if not ids:
            raise RunError(f"answer {answer!r} tokenizes to nothing")
        return int(ids[0])  # P(answer) = P(its first token) at the first decoder step

    @property
    def d_model(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def eos_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of token ids (the table the semantic view and prompt share)."""
        return self.model.get_input_embeddings()(ids)

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
        encoder = self.model.get_encoder()
        return encoder(inputs_embeds=inputs_embeds,
                       attention_mask=attention_mask.long()).last_hidden_state

    def first_self_attention(self) -> list[tuple[str, nn.Parameter]]:
        """Parameters of the first self-attention module of the model (T5 ``SelfAttention``,
        BERT ``attention.self``, Llama-style ``self_attn``)."""
        for name, module in self.model.named_modules():
            if name.endswith(("SelfAttention", "attention.self", "self_attn")):
                params = [(f"{name}.{n}", p) for n, p in module.named_parameters()]
                if params:
                    return params
        raise RunError("no self-attention block found in the backbone")

    @property
    def lm_head_tied(self) -> bool:
        """Whether the LM head shares storage with the input embeddings."""
        head = self.model.get_output_embeddings()
        return head is not None and (
            head.weight.data_ptr() == self.model.get_input_embeddings().weight.data_ptr())

    def save(self, directory: Path) -> None:
        """Write the backbone's config, tokenizer and tying (weights go in model.safetensors)."""
        self.model.config.save_pretrained(directory / "backbone")
        self.tokenizer.save_pretrained(directory / "tokenizer")
        (directory / "backbone" / "gensr_tying.json").write_text(
            json.dumps({"lm_head_tied": self.lm_head_tied}))


def load_backbone(name: str, *, artifacts: Path | None, corpus: list[str] | None,
                  answer_yes: str, answer_no: str, scratch: dict) -> Seq2SeqBackbone:
    """The backbone of a run directory (offline), a scratch T5, or a hub/local model."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

    if artifacts is not None and (artifacts / "backbone" / "config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(artifacts / "tokenizer")
        config = AutoConfig.from_pretrained(artifacts / "backbone")
        model = AutoModelForSeq2SeqLM.from_config(config)
        tying = artifacts / "backbone" / "gensr_tying.json"
        if tying.exists() and not json.loads(tying.read_text())["lm_head_tied"]:
            _untie_lm_head(model)  # rebuild exactly the tying the run was trained with
        return Seq2SeqBackbone(model, tokenizer, answer_yes, answer_no)
    if name == SCRATCH:
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
        return Seq2SeqBackbone(model, tokenizer, answer_yes, answer_no)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForSeq2SeqLM.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise RunError(
            f"could not load backbone {name!r}: {str(err).splitlines()[0]} — give a local "
            f"directory, a reachable hub name, or '{SCRATCH}' (not pretrained, offline)"
        ) from None
    return Seq2SeqBackbone(model, tokenizer, answer_yes, answer_no)
