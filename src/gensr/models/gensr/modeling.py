"""GenSR (Zhao et al. 2025): dual-view history, soft filtering, task prompts, one seq2seq LM.

Scoring one (user, candidate[, query]): encode the user's mixed S&R history in two views
(:class:`CFView`, :class:`SemanticView`) — once per instance, reused for all its candidates —,
soft-filter each view with the candidate (:class:`SoftFilter`), splice the two filtered history
vectors and the two candidate vectors into the task's prompt (:class:`PromptBuilder`) as
``inputs_embeds``, and rank by the log-odds of "Yes" at the first decoder step. Training: NLL
of "Yes"/"No" (Eq. 9) + λ · symmetric InfoNCE between the filtered CF and semantic history
vectors (Eq. 10).

How fast the backbone pass runs is set by :attr:`GenSR.speed` (:class:`Speed`: the fused T5
pass, length buckets, chunk size, compilation) and :meth:`GenSR.set_precision` (bf16 backbone
weights); on CPU the defaults are the original path (docs/speed.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gensr.data.batching import Batch
from gensr.data.dataset import SRData
from gensr.errors import ConfigError
from gensr.models.base import ModelOutput, SRModel
from gensr.models.gensr.backbone import Backbone, load_backbone
from gensr.models.gensr.backbones import LoraSettings
from gensr.models.gensr.configuration import (
    REC_TEMPLATE,
    SRC_TEMPLATE,
    GenSRConfig,
    resolve_template,
)
from gensr.models.gensr.fused_t5 import FusedT5
from gensr.models.gensr.prompt import (
    ALL_VECTOR_SLOTS,
    CANDIDATE_TEXT_MARKER,
    USER_SLOT,
    VECTOR_SLOTS,
    PromptBuilder,
    PromptTemplate,
)
from gensr.models.gensr.soft_filter import SoftFilter
from gensr.models.gensr.speed import BackboneRunner, Speed
from gensr.models.gensr.tokens import cached_token_table, token_table
from gensr.models.gensr.views import CFView, SemanticView
from gensr.tensor import masked_mean


@dataclass
class HistoryEncoding:
    """The candidate-independent part of an instance, computed once and reused."""

    cf: torch.Tensor | None  # H^cf (B, L, d_cf)
    cf_mask: torch.Tensor
    sem: torch.Tensor | None  # H^sem (B, L*N, d)
    sem_mask: torch.Tensor | None
    prompt_ids: torch.Tensor  # (B, T) with slot markers
    prompt_mask: torch.Tensor  # (B, T)
    query_tokens: torch.Tensor | None = None  # (B, Q) search query's tokens (query_match)
    user: torch.Tensor | None = None  # (B, d_cf) the user's CF vector (user_vector)

    def select(self, index: torch.Tensor | slice) -> HistoryEncoding:
        pick = (lambda x: None if x is None else x[index])  # noqa: E731
        return HistoryEncoding(pick(self.cf), pick(self.cf_mask), pick(self.sem),
                               pick(self.sem_mask), pick(self.prompt_ids),
                               pick(self.prompt_mask), pick(self.query_tokens),
                               pick(self.user))


class TokenRows:
    """The rows of a padded token table without their padding, made when asked for (a
    list-like of 1-D tensors; :meth:`append` adds rows for texts the table lacks)."""

    def __init__(self, table: torch.Tensor, pad_id: int) -> None:
        self.table = table
        self.pad_id = int(pad_id)
        self.extra: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.table) + len(self.extra)

    def __getitem__(self, index: int) -> torch.Tensor:
        index = int(index)
        if index < 0:
            index += len(self)
        if index < len(self.table):
            row = self.table[index]
            return row[row != self.pad_id]
        return self.extra[index - len(self.table)]

    def append(self, row: torch.Tensor) -> None:
        self.extra.append(row)

    def padded(self, index: torch.Tensor) -> torch.Tensor:
        """(len(index), width) rows ``index``, padded like the table."""
        if not self.extra or bool((index < len(self.table)).all()):
            return self.table[index.cpu()].to(index.device)
        out = torch.full((len(index), self.table.shape[1]), self.pad_id, dtype=torch.long)
        for i, q in enumerate(index.tolist()):
            row = self[q][: self.table.shape[1]]
            out[i, : len(row)] = row
        return out.to(index.device)


def data_token_table(tokenizer, data: SRData, texts: list[str], width: int, kind: str
                     ) -> torch.Tensor:
    """:func:`token_table` of ``texts`` (the data's items or queries), cached in
    ``DATA_DIR/cache/`` by tokenizer fingerprint and width (:mod:`gensr.models.gensr.tokens`)."""
    return cached_token_table(tokenizer, texts, width, data_dir=getattr(data, "path", None),
                              data_fingerprint=str(getattr(data, "fingerprint", "")), kind=kind)


def gather_batch(x: torch.Tensor) -> torch.Tensor:
    """``x`` (b, …) of every training process concatenated (W·b, …), with gradient, when
    ``torch.distributed`` runs several processes (DDP under ``accelerate launch``); ``x``
    itself on one process. Every process must call it with the same ``b``.

    The backward pass sums, for each process's rows, the gradients all processes computed
    for them; DDP then averages the parameter gradients over the processes, so a loss
    computed on the gathered batch gets exactly the gradient it has on one process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def yes_log_odds(logits: torch.Tensor, yes_id: int) -> torch.Tensor:
    """log P(Yes) - log(1 - P(Yes)) = l_yes - logsumexp(the other logits), in fp32.

    The score GenSR ranks by: it orders candidates exactly as P("Yes") does, but it never
    saturates (P(Yes) = exp(...) rounds to 1.0 once "Yes" leads by about 17 nats in fp32, and
    confident candidates would tie); ``torch.sigmoid`` of it is P("Yes")."""
    logits = logits.float()
    rest = logits.clone()
    rest[..., yes_id] = float("-inf")
    return logits[..., yes_id] - torch.logsumexp(rest, dim=-1)


def info_nce(z_cf: torch.Tensor, z_sem: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 10, symmetrised: cosine similarities / τ, the same user's pair as the positive and
    the other users in the batch as negatives, averaged over both directions. Under DDP the
    callers pass the whole global batch (:func:`gather_batch`), so the negatives, and the
    loss, do not depend on the number of processes."""
    sim = F.normalize(z_cf, dim=-1) @ F.normalize(z_sem, dim=-1).T / tau
    target = torch.arange(sim.shape[0], device=sim.device)
    return 0.5 * (F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target))


def scratch_corpus(data: SRData, rec_template: str = REC_TEMPLATE,
                   src_template: str = SRC_TEMPLATE) -> list[str]:
    """The text a ``scratch-t5`` tokenizer's vocabulary is built from: the data's item texts
    and queries, and the two prompt templates (20 times each, so their words are kept)."""
    return [*data.item_text[1:], *data.query_text[1:]] + [rec_template, src_template] * 20


def load_cf_table(config: GenSRConfig, data: SRData) -> torch.Tensor:
    """The frozen CF item table for ``data`` (checked by fingerprint), or zeros if unused."""
    if not config.use_cf_view:
        return torch.zeros(data.n_items + 1, 8)
    return _cf_table(config, data).item


def load_cf_users(config: GenSRConfig, data: SRData) -> torch.Tensor:
    """The frozen CF user table (``user_vector``): (n_users + 1, d_cf), row 0 = no user."""
    table = _cf_table(config, data)
    if table.user is None:
        raise ConfigError(f"user_vector needs the CF table's user rows: {config.cf_path} has "
                          "none (pretrain it again with gensr pretrain-cf)")
    return table.user


def _cf_table(config: GenSRConfig, data: SRData):
    if not config.cf_path:
        raise ConfigError("GenSR's CF view (and user_vector) needs cf_path (run `gensr "
                          "pretrain-cf`, then pass --cf CF_PATH), or turn the view off with "
                          "use_cf_view=false")
    from gensr.cf import CFTable

    return CFTable.load(config.cf_path, data)


def build_views(config, cf: torch.Tensor, n_items: int, width: int
                ) -> tuple[CFView, SemanticView, SoftFilter, SoftFilter, nn.Linear]:
    """The two history views (Eq. 3-4), their soft filters (Eq. 5-6) and the projection of
    CF vectors to ``width``, from the view/filter fields that GenSR and its discriminative
    twin share (``max_his_len``, ``view_*``, ``item_text_tokens``, ``filter_*``)."""
    if cf.shape[0] != n_items + 1:
        raise ConfigError(f"CF table has {cf.shape[0]} rows, the data {n_items + 1}")
    cf_view = CFView(cf, config.max_his_len, config.view_layers, config.view_heads,
                     config.view_dropout)
    semantic_view = SemanticView(width, config.max_his_len * config.item_text_tokens,
                                 config.view_layers, config.view_heads, config.view_dropout)
    cf_filter = SoftFilter(cf_view.dim, config.filter_heads, config.filter_value_projection)
    sem_filter = SoftFilter(width, config.filter_heads, config.filter_value_projection)
    return cf_view, semantic_view, cf_filter, sem_filter, nn.Linear(cf_view.dim, width)


class GenSR(SRModel):
    """The generative S&R model. See the module docstring and METHOD.md for the equations."""

    name = "gensr"
    config_class = GenSRConfig

    def __init__(self, config: GenSRConfig, data: SRData, *, cf_table: torch.Tensor | None = None,
                 cf_users: torch.Tensor | None = None, artifacts: Path | None = None) -> None:
        super().__init__(config, data)
        if not (config.use_cf_view or config.use_semantic_view):
            raise ConfigError("GenSR needs at least one view (cf or semantic)")
        rec_template = resolve_template(config.rec_template, "rec")
        src_template = resolve_template(config.src_template, "src")
        corpus = None if artifacts is not None else scratch_corpus(data, rec_template,
                                                                  src_template)
        self.backbone: Backbone = load_backbone(
            config.backbone, artifacts=artifacts, corpus=corpus,
            answer_yes=config.answer_yes, answer_no=config.answer_no,
            scratch={"vocab_size": config.scratch_vocab_size, "d_model": config.scratch_d_model,
                     "layers": config.scratch_layers,
                     "decoder_layers": config.scratch_decoder_layers,
                     "heads": config.scratch_heads, "d_ff": config.scratch_d_ff,
                     "dropout": config.scratch_dropout},
            gguf_file=config.backbone_gguf_file, lora=LoraSettings.from_config(config),
        )
        d_model = self.backbone.d_model
        tok = self.backbone.tokenizer
        # token tables of item texts (first N tokens) and queries, cached in the data directory
        self.register_buffer("item_tokens", data_token_table(
            tok, data, data.item_text, config.item_text_tokens, "items"), persistent=False)
        self.query_tokens = TokenRows(data_token_table(
            tok, data, data.query_text, config.max_query_tokens, "queries"),
            self.backbone.pad_id)

        cf = cf_table if cf_table is not None else load_cf_table(config, data)
        # CF vectors are projected to d_model before the prompt
        (self.cf_view, self.semantic_view, self.cf_filter, self.sem_filter,
         self.cf_projection) = build_views(config, cf, data.n_items, d_model)
        with_text = config.candidate_text_len > 0
        if config.user_vector and not config.use_cf_view:
            raise ConfigError("user_vector splices the user's CF vector: it needs the CF view "
                              "(use_cf_view: true)")
        self.prompts = PromptBuilder(
            tok,
            PromptTemplate.parse(rec_template, plural=config.domain_plural,
                                 singular=config.domain_singular, needs_query=False,
                                 candidate_text=with_text, user_vector=config.user_vector),
            PromptTemplate.parse(src_template, plural=config.domain_plural,
                                 singular=config.domain_singular, needs_query=True,
                                 candidate_text=with_text, user_vector=config.user_vector),
            eos_id=self.backbone.eos_id, pad_id=self.backbone.pad_id,
            candidate_text_len=config.candidate_text_len,
        )
        # gensr's levers (GenSRConfig; all off in the paper's model)
        if with_text:  # the candidate's first tokens, spliced into the prompt
            field_name = config.candidate_text_field
            texts = {"text": data.item_text, "category": data.item_category,
                     "category+text": [f"{c}. {t}" if c else t for c, t in
                                       zip(data.item_category, data.item_text)]}[field_name]
            kind = "items" if field_name == "text" else field_name.replace("+", "-")
            self.register_buffer("candidate_tokens", data_token_table(
                tok, data, texts, config.candidate_text_len, kind), persistent=False)
        self.item_embedding = None
        if config.item_embedding:  # a trainable vector per item, zero at the start
            self.item_embedding = nn.Embedding(data.n_items + 1, d_model, padding_idx=0)
            nn.init.zeros_(self.item_embedding.weight)
        self.query_match = None
        if config.query_match:  # added to candidate tokens found in the query, zero at start
            self.query_match = nn.Parameter(torch.zeros(d_model))
        # the frozen CF user table (user_vector; row 0: no user), else None
        users = None
        if config.user_vector:
            users = cf_users if cf_users is not None else load_cf_users(config, data)
            users = users.detach().float()
        self.register_buffer("cf_users", users, persistent=False)
        self.cf_behaviour = self.sem_behaviour = None
        if config.behaviour_marker:  # 1 = rec, 2 = search (0 = padding), zero at the start
            self.cf_behaviour = nn.Embedding(3, self.cf_view.dim, padding_idx=0)
            self.sem_behaviour = nn.Embedding(3, d_model, padding_idx=0)
            nn.init.zeros_(self.cf_behaviour.weight)
            nn.init.zeros_(self.sem_behaviour.weight)
        self.runner = BackboneRunner(self.backbone)  # how the pass runs (speed.py)

    @classmethod
    def build(cls, config: GenSRConfig, data: SRData, artifacts: Path | None = None) -> GenSR:
        return cls(config, data, artifacts=artifacts)

    def save_artifacts(self, directory: Path) -> None:
        self.backbone.save(directory)

    @staticmethod
    def _token_table(tokenizer, texts: list[str], width: int) -> torch.Tensor:
        """(len(texts), width): each text's first ``width`` tokens, padded (row 0 = padding)."""
        return token_table(tokenizer, texts, width)

    def add_queries(self, texts: list[str]) -> list[int]:
        """Tokenise query texts the data does not hold and append them to ``query_tokens``."""
        new = [t for t in dict.fromkeys(texts) if t not in self.known_queries]
        if new:
            cfg: GenSRConfig = self.config  # type: ignore[assignment]
            table = self._token_table(self.backbone.tokenizer, ["", *new], cfg.max_query_tokens)
            for text, row in zip(new, table[1:]):
                self.known_queries[text] = len(self.query_tokens)
                self.query_tokens.append(row[row != self.backbone.pad_id])
        return super().add_queries(texts)

    # --- speed: the BackboneRunner beside the model (gensr.models.gensr.speed) ---------------
    @property
    def speed(self) -> Speed:
        """The runtime speed levers (:class:`Speed`; not saved with the model)."""
        return self.runner.speed

    @speed.setter
    def speed(self, value: Speed) -> None:
        self.runner.speed = value

    @property
    def precision(self) -> str:
        """The backbone weights' precision: ``bf16`` or ``fp32``."""
        return self.runner.precision

    def set_precision(self, precision: str = "auto") -> str:
        """Cast the backbone's weights for inference: ``bf16``, ``fp32`` or ``auto`` (bf16 on
        a CUDA device that supports it, else fp32). The history views, filters and
        projections stay fp32 (they are small and run once per instance), and so does the LM
        head (bf16 logits would round close scores into ties). Returns the precision now in
        effect. For training keep fp32 weights (the trainer autocasts)."""
        return self.runner.set_precision(precision, self.device)

    def fused_runner(self) -> FusedT5 | None:
        """The fused T5 pass over this backbone, or None when the backbone is not a T5."""
        return self.runner.fused_runner()

    def resolved_speed(self) -> Speed:
        """:attr:`speed` with its automatic values decided for this model's device."""
        return self.runner.resolved(self.device)

    # --- the candidate-independent part ----------------------------------------------------
    def encode_history(self, batch: Batch) -> HistoryEncoding:
        """CF view (Eq. 3) and semantic view (Eq. 4) of each instance's history, + prompt ids."""
        cfg: GenSRConfig = self.config  # type: ignore[assignment]
        mask = batch.hist_mask
        behaviour = None if self.cf_behaviour is None else batch.hist_behaviour.clamp(0, 2)
        cf = None
        if cfg.use_cf_view:
            marker = None if self.cf_behaviour is None else self.cf_behaviour(behaviour)
            cf = self.cf_view(batch.hist_item, mask, marker)
        sem = sem_mask = None
        if cfg.use_semantic_view:
            n = cfg.item_text_tokens
            tokens = self.item_tokens[batch.hist_item].flatten(1)  # (B, L*N)
            sem_mask = (tokens != self.backbone.pad_id) & mask.repeat_interleave(n, dim=1)
            embedded = self.backbone.embed(tokens).to(self.semantic_view.position.weight.dtype)
            if self.item_embedding is not None:  # each item's vector on each of its tokens
                embedded = embedded + self.item_embedding(batch.hist_item).repeat_interleave(
                    n, dim=1)
            if self.sem_behaviour is not None:
                embedded = embedded + self.sem_behaviour(behaviour).repeat_interleave(n, dim=1)
            sem = self.semantic_view(embedded, sem_mask)
        ids, prompt_mask = self.prompts.layout(batch.task, batch.query, self.query_tokens)
        query = None
        if self.query_match is not None:  # rec instances: all padding (nothing matches)
            query = self.query_tokens.padded(batch.query)
            query = query.masked_fill(batch.task[:, None] != 1, self.backbone.pad_id)
        user = None
        if self.cf_users is not None:  # the user's CF row; no user: the history's mean
            known = (batch.user > 0) & (batch.user < len(self.cf_users))
            history = masked_mean(self.cf_view.item_vectors(batch.hist_item), mask)
            user = torch.where(known[:, None], self.cf_users[batch.user * known], history)
        return HistoryEncoding(cf, mask, sem, sem_mask, ids, prompt_mask, query, user)

    # --- the candidate-dependent part ------------------------------------------------------
    def slot_vectors(self, enc: HistoryEncoding, candidates: torch.Tensor
                     ) -> dict[str, torch.Tensor]:
        """The four spliced vectors (B, C, d) for each candidate (Eq. 5-6 and the candidate
        vectors); a view that is switched off contributes zeros. With ``candidate_text_len``,
        also ``candidate_text`` (B, C, N, d) token embeddings and their mask."""
        cfg: GenSRConfig = self.config  # type: ignore[assignment]
        b, c = candidates.shape
        d = self.backbone.d_model
        zeros = candidates.new_zeros((b, c, d), dtype=torch.float).to(self.cf_projection.weight)
        out = {slot: zeros for slot in VECTOR_SLOTS}
        if cfg.use_cf_view:
            e_cf = self.cf_view.item_vectors(candidates)  # (B, C, d_cf), frozen
            if cfg.use_soft_filter:
                h_cf = self.cf_filter(e_cf, enc.cf, enc.cf_mask)
            else:
                h_cf = masked_mean(enc.cf, enc.cf_mask)[:, None].expand(b, c, -1)
            out["cf_history"] = self.cf_projection(h_cf)
            out["cf_candidate"] = self.cf_projection(e_cf)
            if enc.user is not None:  # user_vector: one more slot, the same for every candidate
                out[USER_SLOT] = self.cf_projection(enc.user)[:, None].expand(b, c, -1)
        if cfg.use_semantic_view:
            tokens = self.item_tokens[candidates]  # (B, C, N)
            embedded = self.backbone.embed(tokens).to(self.sem_filter.key.weight.dtype)
            e_sem = masked_mean(embedded, tokens != self.backbone.pad_id)
            if self.item_embedding is not None:
                e_sem = e_sem + self.item_embedding(candidates)
            if cfg.use_soft_filter:
                h_sem = self.sem_filter(e_sem, enc.sem, enc.sem_mask)
            else:
                h_sem = masked_mean(enc.sem, enc.sem_mask)[:, None].expand(b, c, -1)
            out["sem_history"] = h_sem
            out["sem_candidate"] = e_sem
        if cfg.candidate_text_len:
            text = self.candidate_tokens[candidates]  # (B, C, N)
            real = text != self.backbone.pad_id
            out["candidate_text"] = self.backbone.embed(text)
            if self.query_match is not None and enc.query_tokens is not None:
                query = enc.query_tokens  # (B, Q); a pad never matches (real below)
                found = (text[..., None] == query[:, None, None, :]).any(dim=-1) & real
                out["candidate_text"] = out["candidate_text"] + (
                    found[..., None].to(self.query_match.dtype) * self.query_match)
            out["candidate_text_mask"] = real
        return out

    def prompt_embeddings(self, enc: HistoryEncoding, vectors: dict[str, torch.Tensor]
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 7: the prompt's token embeddings with the four vectors spliced in, flattened to
        (B*C, T, d) pointwise sequences, and their attention mask. The vectors are written
        into one copy of the prompt per candidate."""
        ids = enc.prompt_ids
        b, t = ids.shape
        c = vectors["cf_history"].shape[1]
        base = self.backbone.embed(ids.clamp(min=0))  # (B, T, d)
        d = base.shape[-1]
        slots = [*VECTOR_SLOTS, *([USER_SLOT] if USER_SLOT in vectors else [])]
        markers = torch.tensor([PromptBuilder.slot_marker(ALL_VECTOR_SLOTS.index(slot))
                                for slot in slots], device=ids.device)
        where = (ids[:, None, :] == markers[None, :, None]).int().argmax(dim=2)  # (B, S)
        stacked = torch.stack([vectors[slot] for slot in slots], dim=2)  # (B, C, S, d)
        embeds = base[:, None].expand(b, c, t, d).clone()
        rows = torch.arange(b, device=ids.device)[:, None, None]
        cols = torch.arange(c, device=ids.device)[None, :, None]
        embeds[rows, cols, where[:, None, :]] = stacked.to(embeds.dtype)
        mask = enc.prompt_mask[:, None].expand(b, c, t)
        if "candidate_text" in vectors:  # the candidate's tokens and their own mask
            n = vectors["candidate_text"].shape[2]
            at = torch.nonzero(ids == CANDIDATE_TEXT_MARKER)[:, 1].view(b, n)[:, None, :]
            embeds[rows, cols, at] = vectors["candidate_text"].to(embeds.dtype)
            mask = mask.clone()
            mask[rows, cols, at] = vectors["candidate_text_mask"]
        return embeds.reshape(b * c, t, -1), mask.reshape(b * c, t)

    def yes_no_logits(self, enc: HistoryEncoding, candidates: torch.Tensor, *,
                      speed: Speed | None = None, shared_mask: bool = False
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """First-step vocabulary logits (B, C, V), unnormalised, and the slot vectors.
        ``shared_mask``: every prompt in ``enc`` has the same mask (a length bucket)."""
        speed = speed or self.resolved_speed()
        vectors = self.slot_vectors(enc, candidates)
        return self._prompt_logits(enc, vectors, speed, shared_mask), vectors

    def _prompt_logits(self, enc: HistoryEncoding, vectors: dict[str, torch.Tensor],
                       speed: Speed, shared: bool) -> torch.Tensor:
        """(B, C, V) first-step logits of the prompts of ``enc`` with ``vectors`` spliced in."""
        b, c = vectors["cf_history"].shape[:2]
        embeds, mask = self.prompt_embeddings(enc, vectors)
        shared = shared and "candidate_text" not in vectors  # its padding differs per item
        return self.runner.logits_fn(speed)(embeds, mask, shared=shared).view(b, c, -1)

    # --- analysis hooks ----------------------------------------------------------------------
    def representation(self, batch: Batch) -> torch.Tensor:
        """(B, C, d): the backbone encoder's states over each candidate's prompt, mean-pooled."""
        enc = self.encode_history(batch)
        vectors = self.slot_vectors(enc, batch.candidates)
        embeds, mask = self.prompt_embeddings(enc, vectors)
        states = self.backbone.encoder_states(embeds, mask)
        return masked_mean(states, mask).view(*batch.candidates.shape, -1)

    def shared_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The first self-attention block of the backbone (shared by the rec and src prompts)."""
        return self.backbone.first_self_attention()

    # --- the model interface ---------------------------------------------------------------
    def loss(self, batch: Batch) -> ModelOutput:
        """Eq. 8: L = L_gen + λ·L_cl over the batch's pointwise (candidate, label) examples."""
        cfg: GenSRConfig = self.config  # type: ignore[assignment]
        if batch.labels is None:
            raise ValueError("GenSR.loss needs a batch with labels")
        speed = self.resolved_speed()
        self.runner.set_dropout(speed, (self.cf_view, self.semantic_view))
        enc = self.encode_history(batch)
        vectors = self.slot_vectors(enc, batch.candidates)
        target = torch.where(batch.labels > 0.5, self.backbone.yes_id, self.backbone.no_id)
        logits, targets = [], []  # per length group (the mean below is over all examples)
        groups = self.runner.length_groups(enc, speed)
        for rows, sub, shared in groups:
            picked = vectors if rows is None else {k: v[rows] for k, v in vectors.items()}
            logits.append(self._prompt_logits(sub, picked, speed, shared).flatten(0, 1))
            targets.append((target if rows is None else target[rows]).flatten())
        flat = torch.cat(logits).float()
        l_gen = F.cross_entropy(flat, torch.cat(targets))  # Eq. 9
        loss, logs = l_gen, {"loss_gen": float(l_gen.detach())}
        if cfg.listwise_weight > 0:  # the positive among its instance's candidates
            odds = torch.empty(batch.labels.shape, device=flat.device)
            at = 0
            for rows, _, _ in groups:
                n = batch.labels.shape[1] * (len(batch) if rows is None else len(rows))
                part = yes_log_odds(flat[at : at + n], self.backbone.yes_id)
                odds[slice(None) if rows is None else rows] = part.view(-1, odds.shape[1])
                at += n
            l_list = F.cross_entropy(odds, batch.labels.argmax(dim=1))
            loss = loss + cfg.listwise_weight * l_list
            logs["loss_list"] = float(l_list.detach())
        if cfg.use_contrastive and cfg.use_cf_view and cfg.use_semantic_view and len(batch) > 1:
            positive = batch.labels.argmax(dim=1)  # the filtered vectors w.r.t. the target
            rows = torch.arange(len(batch), device=positive.device)
            z_cf = gather_batch(vectors["cf_history"][rows, positive].float())
            z_sem = gather_batch(vectors["sem_history"][rows, positive].float())
            l_cl = info_nce(z_cf, z_sem, cfg.tau)  # Eq. 10, over the global batch
            loss = loss + cfg.lam * l_cl
            logs["loss_cl"] = float(l_cl.detach())
        return ModelOutput(loss=loss, logs=logs)

    def score(self, batch: Batch) -> torch.Tensor:
        """The log-odds of "Yes" for every candidate (:func:`yes_log_odds`; its sigmoid is
        P("Yes"), in the same order): the history encoded once per instance; with length
        buckets (:attr:`speed`), instances grouped by prompt length; candidates scored in
        chunks of at most ``chunk`` pointwise sequences."""
        speed = self.resolved_speed()
        enc = self.encode_history(batch)
        groups = self.runner.length_groups(enc, speed)
        if groups[0][0] is None:
            return self._score_group(enc, batch.candidates, speed, shared=False)
        out = torch.empty(batch.candidates.shape, dtype=torch.float,
                          device=enc.prompt_ids.device)
        for rows, sub, shared in groups:
            out[rows] = self._score_group(sub, batch.candidates[rows], speed, shared=shared)
        return out

    def _score_group(self, enc: HistoryEncoding, candidates: torch.Tensor, speed: Speed,
                     shared: bool) -> torch.Tensor:
        """Log-odds of "Yes" (B, C) in calls of at most ``speed.chunk`` sequences (at least one
        candidate of each instance of a block of at most ``chunk`` instances)."""
        b, c = candidates.shape
        chunk = int(speed.chunk)  # type: ignore[arg-type]
        blocks = []
        for r0 in range(0, b, chunk):
            rows = slice(r0, r0 + chunk)
            sub = enc if b <= chunk else enc.select(rows)  # type: ignore[arg-type]
            cands = candidates[rows]
            per_chunk = max(1, chunk // max(cands.shape[0], 1))
            parts = []
            for start in range(0, c, per_chunk):
                logits, _ = self.yes_no_logits(sub, cands[:, start : start + per_chunk],
                                               speed=speed, shared_mask=shared)
                parts.append(yes_log_odds(logits, self.backbone.yes_id))
            blocks.append(torch.cat(parts, dim=1))
        return torch.cat(blocks, dim=0)
