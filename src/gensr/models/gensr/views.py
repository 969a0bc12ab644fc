"""Dual-view history encoders (§4.1.1): the CF view (Eq. 3) and the semantic view (Eq. 4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gensr.tensor import attention, dropout


def _encoder(width: int, layers: int, heads: int, dropout: float) -> nn.TransformerEncoder:
    """One transformer encoder as in the reference: MSA + FFN of width = d, post-norm."""
    if width % heads:
        raise ValueError(f"view width {width} is not divisible by {heads} heads")
    layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=width, dropout=dropout,
                                       batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def run_encoder(encoder: nn.TransformerEncoder, x: torch.Tensor, ignore: torch.Tensor,
                fast_dropout: bool) -> torch.Tensor:
    """``encoder(x, src_key_padding_mask=ignore)``; in training with ``fast_dropout``, the
    same post-norm layers written out (SDPA's math, :func:`gensr.tensor.dropout`'s fast CPU
    masks for every dropout; nn's own layers draw them through ``bernoulli_``)."""
    layers = encoder.layers
    if not (fast_dropout and encoder.training and all(_plain_layer(la) for la in layers)
            and any(_dropout_rates(la) for la in layers)):  # nothing to draw: nn's forward
        return encoder(x, src_key_padding_mask=ignore)
    b, t, d = x.shape
    bias = torch.zeros(ignore.shape, dtype=x.dtype, device=x.device).masked_fill_(
        ignore, float("-inf"))[:, None, None, :]  # (B, 1, 1, T) over the keys
    for layer in layers:
        sa = layer.self_attn
        h, dh = sa.num_heads, d // sa.num_heads
        q, k, v = (z.view(b, t, h, dh).transpose(1, 2)
                   for z in F.linear(x, sa.in_proj_weight, sa.in_proj_bias).chunk(3, dim=-1))
        heads = attention(q, k, v, bias, scale=dh ** -0.5, p=sa.dropout, fast_dropout=True)
        attended = sa.out_proj(heads.transpose(1, 2).reshape(b, t, d))
        x = layer.norm1(x + dropout(attended, layer.dropout1.p, True))
        inner = dropout(F.relu(layer.linear1(x)), layer.dropout.p, True)
        x = layer.norm2(x + dropout(layer.linear2(inner), layer.dropout2.p, True))
    return x if encoder.norm is None else encoder.norm(x)


def _dropout_rates(layer: nn.Module) -> bool:
    """Whether any dropout of the encoder ``layer`` (attention, FFN, residuals) is above 0."""
    return any(rate > 0 for rate in (layer.self_attn.dropout, layer.dropout.p,
                                     layer.dropout1.p, layer.dropout2.p))


def _plain_layer(layer: nn.Module) -> bool:
    """Whether ``layer`` is the post-norm ReLU encoder layer that :func:`run_encoder` writes
    out (what :func:`_encoder` builds)."""
    return (type(layer) is nn.TransformerEncoderLayer and not layer.norm_first
            and layer.activation_relu_or_gelu == 1 and layer.self_attn.batch_first
            and layer.self_attn._qkv_same_embed_dim and layer.self_attn.in_proj_bias is not None)


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
        self.fast_dropout = False  # set by GenSR from its Speed (run_encoder)

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
        return run_encoder(self.encoder, x, _safe_padding_mask(mask), self.fast_dropout)


class SemanticView(nn.Module):
    """Eq. 4: the history items' text tokens (first N each, concatenated), embedded by the
    backbone's input embedding table, then one transformer encoder: H^sem (B, L*N, d)."""

    def __init__(self, d_model: int, max_tokens: int, layers: int, heads: int,
                 dropout: float) -> None:
        super().__init__()
        self.position = nn.Embedding(max_tokens, d_model)
        self.encoder = _encoder(d_model, layers, heads, dropout)
        self.fast_dropout = False  # set by GenSR from its Speed (run_encoder)

    def forward(self, token_embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``token_embeddings`` (B, T, d) and ``mask`` (B, T) -> (B, T, d)."""
        positions = torch.arange(token_embeddings.shape[1], device=token_embeddings.device)
        x = token_embeddings + self.position(positions)[None]
        return run_encoder(self.encoder, x, _safe_padding_mask(mask), self.fast_dropout)
