"""The discriminative twin of GenSR: the same inputs, a shared encoder and two task heads.

GenSR's paper argues about *paradigms* (§3): a discriminative model (Eq. 1: shared encoder
f_θ, task-specific heads, α·L_S + (1−α)·L_R with binary cross-entropy) against the generative
one (Eq. 2: task prompts, one LM, "Yes"/"No"). This model holds everything else equal so the
comparison isolates the paradigm:

* the **same views and filter**, GenSR's own modules: :class:`CFView` over the same frozen
  LightGCN table (``cf_path``), :class:`SemanticView` over the history items' first
  ``item_text_tokens`` text tokens embedded by a token table of GenSR's backbone width,
  :class:`SoftFilter` with the candidate as query, the CF vectors mapped to that width by a
  linear layer, and GenSR's contrastive loss between the filtered CF and semantic vectors
  (Eq. 10, weight ``lam``, temperature ``tau``);
* the **token table**: the backbone's tokenizer and input embeddings, loaded with GenSR's
  backbone loader and everything but the embedding table dropped — for ``scratch-t5`` the
  same WordPiece tokenizer, trained on the same corpus, and the same random initialisation
  as GenSR's scratch backbone; for a hub model its pretrained embeddings;
* the **shared encoder** replaces the LM: a small pre-norm transformer over the five slot
  vectors GenSR splices into its prompt — [filtered CF history, filtered semantic history,
  candidate CF, candidate semantic, query] (the query is the mean of its token embeddings; a
  rec instance has no query slot) — each plus a learned slot embedding; the masked mean of
  its outputs is the shared representation;
* **two task heads** (a two-layer MLP each) read it; loss α·L_S + (1−α)·L_R + λ·L_cl.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gensr.data.batching import Batch
from gensr.data.dataset import SRData
from gensr.errors import ConfigError, RunError
from gensr.files import read_json
from gensr.models.base import RUN_AGAIN, ModelOutput, SRModel
from gensr.models.gensr.backbone import load_backbone, load_run_tokenizer
from gensr.models.gensr.configuration import DualViewConfig
from gensr.models.gensr.modeling import (
    build_views,
    data_token_table,
    gather_batch,
    info_nce,
    scratch_corpus,
)
from gensr.outputs import write_atomic, write_folder_atomic
from gensr.tensor import masked_mean

EMBEDDING_FILE = "disc_embedding.json"
N_SLOTS = 5  # cf history, sem history, cf candidate, sem candidate, query


@dataclass
class DiscConfig(DualViewConfig):
    """Settings of the discriminative twin: GenSR's shared settings (:class:`DualViewConfig`:
    backbone — only its tokenizer and input embeddings are used —, CF table, window, views,
    filter, contrastive loss) and its own encoder and heads."""

    # Eq. 1: α·L_S + (1−α)·L_R
    alpha: float = 0.5
    # the shared encoder (defaults mirror the scratch T5 encoder: 2 layers, 4 heads, d_ff 256)
    encoder_layers: int = 2
    encoder_heads: int = 4
    encoder_ff: int = 256
    encoder_dropout: float = 0.1
    head_hidden: int = 64  # hidden width of each task head


class DiscriminativeTwin(SRModel):
    """GenSR's inputs, a shared transformer encoder and one head per task (see module)."""

    name = "disc"
    config_class = DiscConfig

    def __init__(self, config: DiscConfig, data: SRData, *, artifacts: Path | None = None,
                 cf_table: torch.Tensor | None = None) -> None:
        super().__init__(config, data)
        if not 0.0 <= config.alpha <= 1.0:
            raise ConfigError(f"model.alpha must be in [0, 1], got {config.alpha}")
        for key in ("encoder_layers", "encoder_heads", "encoder_ff", "head_hidden",
                    "item_text_tokens", "max_query_tokens"):
            if getattr(config, key) < 1:
                raise ConfigError(f"model.{key} must be >= 1, got {getattr(config, key)}")
        self.tokenizer, self.token_embedding = self._token_table(config, data, artifacts)
        d = self.token_embedding.embedding_dim
        if d % config.encoder_heads:
            raise ConfigError(f"the token width {d} is not divisible by model.encoder_heads "
                              f"({config.encoder_heads})")
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.register_buffer("item_tokens", data_token_table(
            self.tokenizer, data, data.item_text, config.item_text_tokens, "items"),
            persistent=False)
        self.register_buffer("query_tokens", data_token_table(
            self.tokenizer, data, data.query_text, config.max_query_tokens, "queries"),
            persistent=False)
        cf = cf_table if cf_table is not None else self._load_cf(config, data)
        (self.cf_view, self.semantic_view, self.cf_filter, self.sem_filter,
         self.cf_projection) = build_views(config, cf, data.n_items, d)
        self.slot = nn.Embedding(N_SLOTS, d)
        nn.init.normal_(self.slot.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(d, config.encoder_heads, config.encoder_ff,
                                           config.encoder_dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.encoder_layers,
                                             enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(d, config.head_hidden), nn.GELU(),
                          nn.Dropout(config.encoder_dropout), nn.Linear(config.head_hidden, 1))
            for _ in range(2))

    # --- construction and persistence -------------------------------------------------------
    @staticmethod
    def _load_cf(config: DiscConfig, data: SRData) -> torch.Tensor:
        if not config.cf_path:
            raise ConfigError("disc's CF view needs cf_path (run `gensr pretrain-cf`, then pass "
                              "--cf CF_PATH)")
        from gensr.cf import CFTable

        return CFTable.load(config.cf_path, data).item

    @staticmethod
    def _token_table(config: DiscConfig, data: SRData, artifacts: Path | None
                     ) -> tuple[object, nn.Embedding]:
        """The tokenizer and an embedding table shaped like the backbone's input embeddings."""
        if artifacts is not None:  # a run directory: its own tokenizer, never a new one
            path = artifacts / EMBEDDING_FILE
            if not path.is_file():
                raise RunError(f"{path} is missing: the run's token table shape (an "
                               "incomplete or damaged run)")
            shape = read_json(path, RunError, hint=RUN_AGAIN)
            rows, dim = shape.get("rows"), shape.get("dim")
            if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                       for v in (rows, dim)):
                raise RunError(f"{path}: 'rows' and 'dim' must be positive integers, got "
                               f"{rows!r} and {dim!r}: not a file gensr wrote; {RUN_AGAIN}")
            tokenizer = load_run_tokenizer(artifacts / "tokenizer")
            return tokenizer, nn.Embedding(rows, dim)
        d = config.scratch_d_model
        backbone = load_backbone(  # a scratch tokenizer learns GenSR's (default) corpus
            config.backbone, artifacts=None, corpus=scratch_corpus(data), answer_yes="Yes",
            answer_no="No",
            scratch={"vocab_size": config.scratch_vocab_size, "d_model": d, "layers": 1,
                     "decoder_layers": 1, "heads": 1, "d_ff": d, "dropout": 0.0})
        source = backbone.model.get_input_embeddings()
        table = nn.Embedding(source.num_embeddings, source.embedding_dim)
        with torch.no_grad():
            table.weight.copy_(source.weight)
        return backbone.tokenizer, table

    @classmethod
    def build(cls, config: DiscConfig, data: SRData, artifacts: Path | None = None
              ) -> DiscriminativeTwin:
        return cls(config, data, artifacts=artifacts)

    def save_artifacts(self, directory: Path) -> None:
        # each file renamed into place whole (as model.safetensors)
        write_folder_atomic(directory / "tokenizer",
                            self.tokenizer.save_pretrained, None)  # type: ignore[attr-defined]
        write_atomic(directory / EMBEDDING_FILE, json.dumps({
            "rows": self.token_embedding.num_embeddings,
            "dim": self.token_embedding.embedding_dim}), None)

    # --- the five slot vectors -----------------------------------------------------------------
    def _mean_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return masked_mean(self.token_embedding(tokens), tokens != self.pad_id)

    def slots(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(B, C, 5, d) slot vectors, their (B, 5) validity, and the filtered history
        vectors (for the contrastive loss)."""
        cfg: DiscConfig = self.config  # type: ignore[assignment]
        mask = batch.hist_mask
        h_cf_seq = self.cf_view(batch.hist_item, mask)  # Eq. 3
        tokens = self.item_tokens[batch.hist_item].flatten(1)
        sem_mask = (tokens != self.pad_id) & mask.repeat_interleave(cfg.item_text_tokens, dim=1)
        h_sem_seq = self.semantic_view(self.token_embedding(tokens), sem_mask)  # Eq. 4
        cands = batch.candidates
        b, c = cands.shape
        e_cf = self.cf_view.item_vectors(cands)
        e_sem = self._mean_tokens(self.item_tokens[cands])
        h_cf = self.cf_projection(self.cf_filter(e_cf, h_cf_seq, mask))  # Eq. 5-6
        h_sem = self.sem_filter(e_sem, h_sem_seq, sem_mask)
        query = self._mean_tokens(self.query_tokens[batch.query])[:, None].expand_as(h_sem)
        x = torch.stack([h_cf, h_sem, self.cf_projection(e_cf), e_sem, query], dim=2)
        x = x + self.slot.weight
        valid = torch.ones((b, N_SLOTS), dtype=torch.bool, device=cands.device)
        valid[:, -1] = batch.task == 1  # a rec instance has no query
        return x, valid, {"cf_history": h_cf, "sem_history": h_sem}

    def encode(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(B, C, d) shared representation (masked mean of the encoder over the slots)."""
        x, valid, filtered = self.slots(batch)
        b, c, s, d = x.shape
        valid_rows = valid[:, None].expand(b, c, s).reshape(b * c, s)
        out = self.norm(self.encoder(x.reshape(b * c, s, d), src_key_padding_mask=~valid_rows))
        return masked_mean(out, valid_rows).view(b, c, d), filtered

    def _logits(self, rep: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        logits = rep.new_zeros(rep.shape[:2])
        for t in (0, 1):
            rows = task == t
            if bool(rows.any()):
                logits[rows] = self.heads[t](rep[rows]).squeeze(-1).to(logits.dtype)
        return logits

    # --- analysis hooks ----------------------------------------------------------------------
    def representation(self, batch: Batch) -> torch.Tensor:
        """(B, C, d): the shared encoder's pooled output, what both task heads read."""
        return self.encode(batch)[0]

    def shared_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The shared encoder's first self-attention block."""
        attention = self.encoder.layers[0].self_attn
        return [(f"encoder.layers.0.self_attn.{n}", p) for n, p in attention.named_parameters()]

    # --- the model interface ---------------------------------------------------------------
    def score(self, batch: Batch) -> torch.Tensor:
        rep, _ = self.encode(batch)
        return self._logits(rep, batch.task)

    def loss(self, batch: Batch) -> ModelOutput:
        """α·L_S + (1−α)·L_R (BCE over each task's pointwise examples) + λ·L_cl."""
        cfg: DiscConfig = self.config  # type: ignore[assignment]
        if batch.labels is None:
            raise ValueError("disc.loss needs a batch with labels")
        rep, filtered = self.encode(batch)
        logits = self._logits(rep, batch.task)
        bce = F.binary_cross_entropy_with_logits(logits.float(), batch.labels, reduction="none")
        loss = bce.new_zeros(())
        logs: dict[str, float] = {}
        for t, name, weight in ((0, "rec", 1.0 - cfg.alpha), (1, "src", cfg.alpha)):
            rows = batch.task == t
            if bool(rows.any()):
                part = bce[rows].mean()
                loss = loss + weight * part
                logs[f"loss_{name}"] = float(part.detach())
        if cfg.use_contrastive and cfg.lam > 0 and len(batch) > 1:
            positive = batch.labels.argmax(dim=1)
            rows = torch.arange(len(batch), device=positive.device)
            l_cl = info_nce(gather_batch(filtered["cf_history"][rows, positive].float()),
                            gather_batch(filtered["sem_history"][rows, positive].float()),
                            cfg.tau)
            loss = loss + cfg.lam * l_cl
            logs["loss_cl"] = float(l_cl.detach())
        return ModelOutput(loss, logs)
