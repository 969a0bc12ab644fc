"""S&R history soft filtering (§4.1.2, Eq. 5–6)."""

from __future__ import annotations

import math

import torch
from torch import nn

from gensr.tensor import masked_softmax


class SoftFilter(nn.Module):
    """Multi-head cross-attention with the candidate as query over an encoded history.

    Eq. 5: a_j = softmax_j(score(e_c, h_j)), score = (W_q e_c)ᵀ(W_k h_j)/√d_h per head — with
    one head this is the reference's bilinear score h_jᵀ W e_c. Eq. 6: the filtered history is
    Σ_j a_j · W_v h_j (``value_projection=False`` gives the reference's W_v = I). Padding is
    masked; an empty history filters to the zero vector.
    """

    def __init__(self, dim: int, heads: int = 1, value_projection: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"soft filter width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.query = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False) if value_projection else nn.Identity()

    def attention(self, candidate: torch.Tensor, history: torch.Tensor, mask: torch.Tensor
                  ) -> torch.Tensor:
        """Importance weights a (B, heads, C, T) of history positions for each candidate."""
        b, c, d = candidate.shape
        t = history.shape[1]
        dh = d // self.heads
        q = self.query(candidate).view(b, c, self.heads, dh)
        k = self.key(history).view(b, t, self.heads, dh)
        scores = torch.einsum("bchd,bthd->bhct", q, k) / math.sqrt(dh)  # Eq. 5
        return masked_softmax(scores, mask[:, None, None, :])  # no history -> all zero

    def forward(self, candidate: torch.Tensor, history: torch.Tensor, mask: torch.Tensor
                ) -> torch.Tensor:
        """``candidate`` (B, C, d), ``history`` (B, T, d), ``mask`` (B, T) -> (B, C, d)."""
        b, c, d = candidate.shape
        weights = self.attention(candidate, history, mask)
        v = self.value(history).view(b, history.shape[1], self.heads, d // self.heads)
        return torch.einsum("bhct,bthd->bchd", weights, v).reshape(b, c, d)  # Eq. 6

