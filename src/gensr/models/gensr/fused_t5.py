"""GenSR's scoring pass through a T5, written out: one encoder pass, one decoder step.

:class:`FusedT5` computes exactly what ``T5ForConditionalGeneration(inputs_embeds=…,
decoder_input_ids=[[start]])`` computes for the first decoder step — it calls the model's own
modules (layer norms, ``q``/``k``/``v``/``o``, feed-forward blocks, dropouts, LM head), so
LoRA adapters and training work unchanged — but organises the pass for throughput:

* **one attention bias per batch.** T5's relative-position bias (1, H, T, T) is computed
  once and merged with the padding mask once (Hugging Face's SDPA path rebuilds the merged
  (N, H, T, T) tensor in every layer); when every row has the same mask (GenSR's length
  buckets) the merged bias stays (1, H, T, T), broadcast over the batch;
* **SDPA** (``F.scaled_dot_product_attention`` with the bias as additive mask, scale 1):
  no (N, H, T, T) fp32 score tensors in eager code; the memory-efficient kernel on CUDA;
* **one decoder step, specialised:** the first decoder position attends to itself only, so
  its self-attention is ``o(v(x))`` (softmax over one key is 1); no causal mask, no cache,
  no ``generate``;
* **fused element-wise work** (fp32 weights, plain ``nn.Linear`` projections — not under
  LoRA): the gated-GELU feed-forward's activation as one ``F.gelu(approximate="tanh")``
  (the function ``gelu_new`` spells out in eight element-wise passes), and T5's RMS norm
  as ``F.rms_norm``. Same functions; float results agree to rounding;
* **fast dropout masks on CPU** (``fast_dropout``, set from ``Speed.dropout``): every
  dropout through :func:`gensr.tensor.dropout`, attention's included (training only).

``tests/test_speed.py`` checks the logits against the model's own forward (fp32, to 1e-5)
and the gradients in training mode. Only T5-family models (T5 v1.0/v1.1, flan-t5, mT5)
qualify (:meth:`FusedT5.supports`); other backbones keep their own forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gensr.tensor import attention, dropout

_T5_CLASSES = ("T5ForConditionalGeneration", "MT5ForConditionalGeneration")
_T5_NORMS = ("T5LayerNorm", "MT5LayerNorm")
# activations that compute the tanh approximation of GELU (``gelu_new`` and its spellings)
_TANH_GELUS = ("NewGELUActivation", "PytorchGELUTanh", "GELUTanh")


def compute_dtype(x: torch.Tensor, fallback: torch.dtype) -> torch.dtype:
    """The dtype matmuls produce here: the autocast dtype when autocast is on, else
    ``fallback`` (the weights' dtype)."""
    kind = x.device.type
    try:
        if torch.is_autocast_enabled(kind):
            return torch.get_autocast_dtype(kind)
    except TypeError:  # torch < 2.4: no device argument
        if kind == "cuda" and torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
        if kind == "cpu" and torch.is_autocast_cpu_enabled():
            return torch.get_autocast_cpu_dtype()
    return fallback


class FusedT5:
    """The first decoder step of a Hugging Face T5 (see the module docstring).

    Not an ``nn.Module``: it holds references to the model's modules, so moving or casting
    the model moves and casts what it computes with.
    """

    def __init__(self, model: nn.Module, decoder_start_id: int) -> None:
        if not self.supports(model):
            raise TypeError(f"{type(model).__name__} is not a T5 encoder-decoder")
        self.model = model
        cfg = model.config
        self.start_id = int(decoder_start_id)
        self.dropout = float(cfg.dropout_rate)
        scale = getattr(cfg, "scale_decoder_outputs", None)  # transformers >= 5
        self.scale_output = bool(cfg.tie_word_embeddings if scale is None else scale)
        self.d_model = int(cfg.d_model)
        self.fast_dropout = False  # gensr.tensor.dropout's fast CPU masks (Speed.dropout)

    @staticmethod
    def supports(model: nn.Module) -> bool:
        """Whether ``model`` is a T5-family encoder-decoder whose layout this class knows."""
        if type(model).__name__ not in _T5_CLASSES:
            return False
        try:
            first = model.encoder.block[0].layer[0].SelfAttention
            dec = model.decoder.block[0]
            return (first.has_relative_attention_bias and len(dec.layer) == 3
                    and hasattr(dec.layer[1], "EncDecAttention")
                    and model.get_output_embeddings() is not None)
        except (AttributeError, IndexError, TypeError):
            return False

    # --- pieces ------------------------------------------------------------------------
    def _drop(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``module`` (one of T5's ``nn.Dropout``s) applied to ``x``, its mask drawn fast
        when :attr:`fast_dropout` is on."""
        if not self.fast_dropout or type(module) is not nn.Dropout:
            return module(x)
        return dropout(x, module.p, module.training)

    @staticmethod
    def _norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """T5's RMS norm (no mean, no bias, fp32 statistics), fused when everything is fp32."""
        weight = norm.weight
        if x.dtype == torch.float32 and weight.dtype == torch.float32 and type(norm).__name__ \
                in _T5_NORMS:
            return F.rms_norm(x, (x.shape[-1],), weight, norm.variance_epsilon)
        return norm(x)

    def _feed_forward(self, ff: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """T5LayerFF: ``x + dropout(FFN(norm(x)))``; the gated-GELU FFN fused (see above)."""
        dense = ff.DenseReluDense
        if not self._fusable_ffn(dense):
            return ff(x)
        h = self._norm(ff.layer_norm, x)
        # two matmuls, not one of the concatenated weights: the chunks of one (…, 2·d_ff)
        # output are strided, which made GELU and the product about 1.5x slower on CPU
        gate, linear = F.linear(h, dense.wi_0.weight), F.linear(h, dense.wi_1.weight)
        h = self._drop(dense.dropout, F.gelu(gate, approximate="tanh") * linear)
        if h.dtype != dense.wo.weight.dtype:
            h = h.to(dense.wo.weight.dtype)
        return x + self._drop(ff.dropout, dense.wo(h))

    @staticmethod
    def _fusable_ffn(dense: nn.Module) -> bool:
        return (type(dense).__name__ == "T5DenseGatedActDense"
                and type(dense.act).__name__ in _TANH_GELUS
                and all(type(getattr(dense, n)) is nn.Linear for n in ("wi_0", "wi_1", "wo")))

    def _attend(self, attn: nn.Module, x: torch.Tensor, kv: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        """Multi-head attention of ``x`` over ``kv`` with an additive ``mask`` (bias)."""
        n, t, _ = x.shape
        h, dk = attn.n_heads, attn.key_value_proj_dim
        q = attn.q(x).view(n, t, h, dk).transpose(1, 2)
        k = attn.k(kv).view(n, -1, h, dk).transpose(1, 2)
        v = attn.v(kv).view(n, -1, h, dk).transpose(1, 2)
        p = self.dropout if attn.training else 0.0
        out = attention(q, k, v, mask, scale=1.0, p=p, fast_dropout=self.fast_dropout)
        return attn.o(out.transpose(1, 2).reshape(n, t, h * dk))

    def _self_attend_one(self, attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Self-attention of a single position: the weight on its only key is 1."""
        v = attn.v(x)
        if attn.training and self.dropout > 0:  # dropout on that weight, per head
            n, _, inner = v.shape
            h = attn.n_heads
            keep = dropout(v.new_ones(n, 1, h, 1), self.dropout, True, self.fast_dropout)
            v = (v.view(n, 1, h, inner // h) * keep).view(n, 1, inner)
        return attn.o(v)

    def encoder_bias(self, t: int, mask: torch.Tensor, shared: bool, dtype: torch.dtype,
                     device: torch.device) -> torch.Tensor:
        """The additive attention mask of every encoder layer: the relative-position bias
        merged with the padding mask — (1, H, T, T) when ``shared`` (every row has row 0's
        mask), else (N, H, T, T)."""
        first = self.model.encoder.block[0].layer[0].SelfAttention
        bias = first.compute_bias(t, t, device=device).to(dtype)
        keep = (mask[:1] if shared else mask).bool()[:, None, None, :]
        return torch.where(keep, bias, torch.finfo(dtype).min)

    # --- the pass ----------------------------------------------------------------------
    def encode(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, *,
               shared: bool = False) -> torch.Tensor:
        """The encoder's last hidden states (N, T, d)."""
        enc = self.model.encoder
        t = inputs_embeds.shape[1]
        dtype = compute_dtype(inputs_embeds, self.model.get_input_embeddings().weight.dtype)
        bias = self.encoder_bias(t, attention_mask, shared, dtype, inputs_embeds.device)
        hidden = self._drop(enc.dropout, inputs_embeds)
        for block in enc.block:
            sa = block.layer[0]
            normed = self._norm(sa.layer_norm, hidden)
            hidden = hidden + self._drop(sa.dropout,
                                         self._attend(sa.SelfAttention, normed, normed, bias))
            hidden = self._feed_forward(block.layer[-1], hidden)  # norm, FFN, dropout, residual
        return self._drop(enc.dropout, self._norm(enc.final_layer_norm, hidden))

    def first_step_logits(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, *,
                          shared: bool = False) -> torch.Tensor:
        """Vocabulary logits (N, V) of the first decoder step. ``shared``: every row has the
        same attention mask (row 0's), so the masks are built once, broadcast over rows."""
        states = self.encode(inputs_embeds, attention_mask, shared=shared)
        dec = self.model.decoder
        n = states.shape[0]
        dtype = compute_dtype(states, self.model.get_input_embeddings().weight.dtype)
        keep = (attention_mask[:1] if shared else attention_mask).bool()[:, None, None, :]
        cross = torch.where(keep, torch.zeros((), dtype=dtype, device=states.device),
                            torch.finfo(dtype).min)  # (N or 1, 1, 1, T)
        start = torch.full((n, 1), self.start_id, dtype=torch.long, device=states.device)
        y = self._drop(dec.dropout, dec.embed_tokens(start))
        for block in dec.block:
            sa, ca = block.layer[0], block.layer[1]
            y = y + self._drop(sa.dropout, self._self_attend_one(
                sa.SelfAttention, self._norm(sa.layer_norm, y)))
            y = y + self._drop(ca.dropout, self._attend(
                ca.EncDecAttention, self._norm(ca.layer_norm, y), states, cross))
            y = self._feed_forward(block.layer[-1], y)
        y = self._drop(dec.dropout, self._norm(dec.final_layer_norm, y))
        if self.scale_output:
            y = y * (self.d_model ** -0.5)
        return self.model.lm_head(y[:, 0])
