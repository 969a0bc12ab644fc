"""Dual-view history encoders (§4.1.1): the CF view (Eq. 3) and the semantic view (Eq. 4)."""

from __future__ import annotations

import torch
from torch import nn


def _encoder(width: int, layers: int, heads: int, dropout: float) -> nn.TransformerEncoder:
    """One transformer encoder as in the reference: MSA + FFN of width = d, post-norm."""
    if width % heads:
        raise ValueError(f"view width {width} is not divisible by {heads} heads")
    layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=width, dropout=dropout,
                                       batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def _safe_padding_mask(mask: torch.Tensor) -> torch.Tensor:
    """Key-padding mask for nn.Transformer (True = ignore); rows with no history keep their
    last position visible so attention stays finite (their outputs are masked later)."""
    ignore = ~mask
    empty = ~mask.any(dim=1)
    if empty.any():
        ignore = ignore.clone()
        ignore[empty, -1] = False
    return ignore


class CFView(nn.Module):
    """Eq. 3: H^cf = FFN(MSA(E^cf + positions)) over the mixed S&R history.

    ``cf_table`` is the frozen LightGCN item table (a buffer: never trained)."""

    def __init__(self, cf_table: torch.Tensor, max_len: int, layers: int, heads: int,
                 dropout: float) -> None:
        super().__init__()
        self.register_buffer("cf_table", cf_table.float(), persistent=False)
        self.dim = int(cf_table.shape[1])
        self.position = nn.Embedding(max_len, self.dim)
        self.encoder = _encoder(self.dim, layers, heads, dropout)

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """Frozen CF vectors e^cf of item ids (any shape)."""
        return self.cf_table[items]

    def forward(self, items: torch.Tensor, mask: torch.Tensor,
                extra: torch.Tensor | None = None) -> torch.Tensor:
        """``items`` (B, L) left-padded ids, ``mask`` (B, L) -> H^cf (B, L, d_cf); ``extra``
        (B, L, d_cf), if given, is added to the inputs (gensr's behaviour marker)."""
        positions = torch.arange(items.shape[1], device=items.device)
        x = self.item_vectors(items) + self.position(positions)[None]
        if extra is not None:
            x = x + extra
        return self.encoder(x, src_key_padding_mask=_safe_padding_mask(mask))


class SemanticView(nn.Module):
    """Eq. 4: the history items' text tokens (first N each, concatenated), embedded by the
    backbone's input embedding table, then one transformer encoder: H^sem (B, L*N, d)."""

    def __init__(self, d_model: int, max_tokens: int, layers: int, heads: int,
                 dropout: float) -> None:
        super().__init__()
        self.position = nn.Embedding(max_tokens, d_model)
        self.encoder = _encoder(d_model, layers, heads, dropout)

    def forward(self, token_embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``token_embeddings`` (B, T, d) and ``mask`` (B, T) -> (B, T, d)."""
        positions = torch.arange(token_embeddings.shape[1], device=token_embeddings.device)
        x = token_embeddings + self.position(positions)[None]
        return self.encoder(x, src_key_padding_mask=_safe_padding_mask(mask))
