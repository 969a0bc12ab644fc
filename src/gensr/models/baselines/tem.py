"""TEM (Bi, Ai & Croft, *A Transformer-based Embedding Model for Personalized Product Search*,
SIGIR 2020): the transformer search baseline of GenSR's Table 3.

The sequence ``[query, i_1, …, i_n]`` — the query vector followed by the user's history items —
goes through a transformer encoder; the output at the query position is the user-query vector
M_uq, and a candidate's score is M_uq · e_c with the same item table that embeds the history.
The query vector is tanh(W · mean of its word embeddings + b) (words =
:func:`gensr.data.text.analyze` terms, so an unseen query still works), the latent-space query
model of HEM/ZAM/TEM. Search only: ``tasks = ("src",)``. Training: binary cross-entropy of the
positive against the sampled negatives, positives and negatives weighted equally.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gensr.data.batching import Batch
from gensr.data.dataset import SRData
from gensr.errors import ConfigError
from gensr.models.base import ModelConfig, ModelOutput, SRModel
from gensr.models.baselines.words import WordVocabularyArtifacts, build_vocabulary, word_table
from gensr.tensor import drop_leading_padding, masked_mean


@dataclass
class TEMConfig(ModelConfig):
    """TEM's settings (small, CPU-friendly defaults; the paper tunes width and layers)."""

    max_his_len: int = 20
    hidden: int = 64
    n_layers: int = 1
    n_heads: int = 2
    ffn_mult: int = 2  # FFN width = ffn_mult * hidden
    dropout: float = 0.1
    max_query_words: int = 16
    behaviour_embedding: bool = True  # mark history items as rec or search interactions
    user_embedding: bool = False  # TEM represents the user by the history alone
    init_std: float = 0.02


class TEM(WordVocabularyArtifacts, SRModel):
    """Transformer over [query, history items]; the query position's output ranks items."""

    name = "tem"
    vocab_file = "tem_words.json"
    config_class = TEMConfig
    tasks = ("src",)

    def __init__(self, config: TEMConfig, data: SRData, *,
                 vocabulary: list[str] | None = None) -> None:
        super().__init__(config, data)
        for key in ("hidden", "n_layers", "n_heads", "ffn_mult", "max_query_words",
                    "max_his_len"):
            if getattr(config, key) < 1:
                raise ConfigError(f"model.{key} must be >= 1, got {getattr(config, key)}")
        if config.hidden % config.n_heads:
            raise ConfigError(f"model.hidden ({config.hidden}) must be divisible by "
                              f"model.n_heads ({config.n_heads})")
        d = config.hidden
        self.vocabulary = vocabulary if vocabulary is not None else build_vocabulary(
            data, with_items=False)
        index = {w: i + 1 for i, w in enumerate(self.vocabulary)}
        self.register_buffer("query_words", word_table(data.query_text, index,
                                                       config.max_query_words),
                             persistent=False)
        self.item_emb = nn.Embedding(data.n_items + 1, d, padding_idx=0)
        self.words = nn.Embedding(len(self.vocabulary) + 1, d, padding_idx=0)
        self.query_proj = nn.Linear(d, d)
        self.position = nn.Embedding(config.max_his_len, d)
        # 0 = the query token, 1 = rec history item, 2 = search history item
        self.kind = nn.Embedding(3, d)
        self.user_emb = nn.Embedding(data.n_users + 1, d) if config.user_embedding else None
        layer = nn.TransformerEncoderLayer(d, config.n_heads, dim_feedforward=config.ffn_mult * d,
                                           dropout=config.dropout, activation="gelu",
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        self.drop = nn.Dropout(config.dropout)
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=config.init_std)
                if module.padding_idx is not None:
                    with torch.no_grad():
                        module.weight[module.padding_idx].zero_()

    def query_vectors(self, queries: torch.Tensor) -> torch.Tensor:
        """tanh(W mean(word embeddings) + b) of query ids (B,)."""
        ids = self.query_words[queries]
        return torch.tanh(self.query_proj(masked_mean(self.words(ids), ids > 0)))

    def user_query(self, batch: Batch) -> torch.Tensor:
        """(B, d): M_uq, the encoder output at the query position."""
        cfg: TEMConfig = self.config  # type: ignore[assignment]
        batch = batch.last(self.history_window)
        items = batch.hist_item
        items, behaviours = drop_leading_padding(  # may be empty: the query alone
            items > 0, items, batch.hist_behaviour, keep=0)
        n = items.shape[1]
        query = self.query_vectors(batch.query) + self.kind.weight[0]
        if self.user_emb is not None:
            query = query + self.user_emb(batch.user)
        x = self.item_emb(items) + self.position.weight[cfg.max_his_len - n:]
        if cfg.behaviour_embedding:
            x = x + self.kind(behaviours.clamp(1, 2))
        seq = self.drop(torch.cat([query[:, None], x], dim=1))
        ignore = torch.cat([torch.zeros_like(items[:, :1], dtype=torch.bool), items == 0], 1)
        return self.encoder(seq, src_key_padding_mask=ignore)[:, 0]

    def score(self, batch: Batch) -> torch.Tensor:
        return torch.einsum("bd,bcd->bc", self.user_query(batch), self.item_emb(batch.candidates))

    def score_all(self, batch: Batch) -> torch.Tensor:
        return self.query_embedding(batch) @ self.item_embeddings().T

    def query_embedding(self, batch: Batch) -> torch.Tensor:
        return self.user_query(batch)

    def item_embeddings(self) -> torch.Tensor:
        return self.item_emb.weight

    @property
    def reads_user_ids(self) -> bool:
        return bool(self.config.user_embedding)

    def loss(self, batch: Batch) -> ModelOutput:
        if batch.labels is None:
            raise ValueError("TEM.loss needs a batch with labels")
        logits = self.score(batch)
        bce = F.binary_cross_entropy_with_logits(logits, batch.labels, reduction="none")
        pos = batch.labels > 0.5
        loss_pos = bce[pos].mean() if bool(pos.any()) else bce.new_zeros(())
        loss_neg = bce[~pos].mean() if bool((~pos).any()) else bce.new_zeros(())
        return ModelOutput(loss_pos + loss_neg, {"loss_pos": float(loss_pos.detach()),
                                                 "loss_neg": float(loss_neg.detach())})
