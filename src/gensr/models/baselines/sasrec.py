"""SASRec (Kang & McAuley, *Self-Attentive Sequential Recommendation*, ICDM 2018).

The history (both behaviours, as items) goes through causal self-attention blocks with
learned positions; the last position's hidden state is the user's state, and a candidate's
score is its dot product with the candidate's item embedding (shared with the input table).
Training: binary cross-entropy of the positive against the sampled negatives (the batch's
labels). Recommendation only: the query is not read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gensr.data.batching import Batch
from gensr.data.dataset import SRData
from gensr.errors import ConfigError
from gensr.models.base import ModelConfig, ModelOutput, SRModel
from gensr.tensor import drop_leading_padding


@dataclass
class SASRecConfig(ModelConfig):
    max_his_len: int = 50
    hidden: int = 64
    n_layers: int = 2
    n_heads: int = 2
    ffn_mult: int = 1  # point-wise FFN width = ffn_mult * hidden (the paper: hidden)
    dropout: float = 0.2
    behaviour_embedding: bool = False  # add a learned rec/src embedding to history items
    init_std: float = 0.02


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t sees positions <= t that hold an item."""

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.hidden, 3 * config.hidden)
        self.out = nn.Linear(config.hidden, config.hidden)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
        """``x`` (B, L, D); ``allowed`` (B, 1, L, L) True where query t may attend to key s,
        or None: plain causal attention (no position holds padding)."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_heads, d // self.n_heads).unbind(2)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=allowed,
            dropout_p=self.dropout if self.training else 0.0, is_causal=allowed is None)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class FeedForward(nn.Module):
    """SASRec's point-wise feed-forward network."""

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        width = config.ffn_mult * config.hidden
        self.net = nn.Sequential(nn.Linear(config.hidden, width), nn.GELU(),
                                 nn.Dropout(config.dropout), nn.Linear(width, config.hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden)
        self.attn = CausalSelfAttention(config)
        self.norm2 = nn.LayerNorm(config.hidden)
        self.ffn = FeedForward(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), allowed))
        return x + self.drop(self.ffn(self.norm2(x)))


class SASRec(SRModel):
    """Self-attentive sequential recommendation over the mixed S&R history."""

    name = "sasrec"
    config_class = SASRecConfig
    tasks = ("rec",)
    reads_query_text = False

    def __init__(self, config: SASRecConfig, data: SRData) -> None:
        super().__init__(config, data)
        if config.hidden % config.n_heads:
            raise ConfigError(f"model.hidden ({config.hidden}) must be divisible by "
                              f"model.n_heads ({config.n_heads})")
        self.item_emb = nn.Embedding(data.n_items + 1, config.hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(config.max_his_len, config.hidden)
        self.beh_emb = nn.Embedding(3, config.hidden) if config.behaviour_embedding else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.hidden)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()

    def user_state(self, batch: Batch) -> torch.Tensor:
        """(B, D): the hidden state at the most recent history position."""
        batch = batch.last(self.history_window)
        items = batch.hist_item
        (items,) = drop_leading_padding(items > 0, items)  # same result, less work
        n = items.shape[1]
        x = self.item_emb(items) * math.sqrt(self.config.hidden)
        x = x + self.pos_emb.weight[-n:]  # histories are left-padded: most recent = last
        if self.beh_emb is not None:
            x = x + self.beh_emb(batch.hist_behaviour[:, -n:])
        valid = items > 0
        allowed = None  # no padding left (one request's history): plain causal attention
        if self.training or not bool(valid.all()):
            x = self.drop(x) * valid.unsqueeze(-1)
            causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
            # each position always sees itself, so padded rows never attend to nothing
            allowed = causal & (valid[:, None, :] | torch.eye(n, dtype=torch.bool,
                                                             device=x.device))
            allowed = allowed.unsqueeze(1)
        for block in self.blocks:
            x = block(x, allowed)
        return self.norm(x[:, -1])

    def score(self, batch: Batch) -> torch.Tensor:
        user = self.user_state(batch)
        return torch.einsum("bd,bcd->bc", user, self.item_emb(batch.candidates))

    def score_all(self, batch: Batch) -> torch.Tensor:
        return self.query_embedding(batch) @ self.item_embeddings().T

    def query_embedding(self, batch: Batch) -> torch.Tensor:
        return self.user_state(batch)

    def item_embeddings(self) -> torch.Tensor:
        return self.item_emb.weight

    def loss(self, batch: Batch) -> ModelOutput:
        if batch.labels is None:
            raise ValueError("SASRec.loss needs a batch with labels")
        logits = self.score(batch)
        labels = batch.labels
        bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        pos = labels > 0.5
        # positives and negatives weigh equally, however many negatives there are
        loss_pos = bce[pos].mean() if pos.any() else bce.new_zeros(())
        loss_neg = bce[~pos].mean() if (~pos).any() else bce.new_zeros(())
        return ModelOutput(loss_pos + loss_neg,
                           {"loss_pos": float(loss_pos.detach()),
                            "loss_neg": float(loss_neg.detach())})
