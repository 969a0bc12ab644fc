"""UniSAR (Shi et al., *UniSAR: Modeling User Transition Behaviors between Search and
Recommendation*, SIGIR 2024): the strongest discriminative unifier in GenSR's Tables 2–3.

The parts, in the order one instance flows through them:

1. **Inputs.** Items are ID embeddings (width ``id_dim``, optionally + the mean of their text's
   word embeddings) mapped to ``hidden`` by a linear layer and tanh; queries are the mean of
   their word embeddings (words = :func:`gensr.data.text.analyze` terms, so a query never seen
   in training still has a vector) mapped the same way; users have an ID embedding. A search
   interaction of the history is its item vector + its query vector.
2. **Extraction.** A *rec* transformer over the rec interactions only and a *src* transformer
   over the search interactions only (rec→rec and src→src behaviour), and a *global*
   transformer over the mixed history whose attention mask lets each position attend only to
   positions of the **other** type ("same-type masking"): at a rec position it yields the
   src→rec transition, at a search position the rec→src transition.
3. **Alignment.** Query–item contrastive loss between the queries and clicked items of the
   history's search interactions (bilinear, tanh, learnable temperature, sampled negative
   items and queries), and history contrastive loss between each behaviour's own-type
   encoding and its transition encoding (mean-pooled, bilinear, tanh, in-batch negatives).
4. **Fusion.** Two cross-fusion decoders: the rec history (queries) reads the src→rec
   transitions (memory); the src history reads the rec→src transitions.
5. **Prediction.** Target attention (bilinear, candidate as query) pools each fused history;
   ``[rec interest, src interest, candidate, user, query]`` (a learned vector stands in for the
   query of a rec instance) goes through a PLE layer (shared and task-specific experts,
   per-task gates and towers) and one MLP head per task. Loss: BCE per task,
   ``L_rec + src_loss_weight · L_src + q_i_cl_weight · L_qi + his_cl_weight · L_his``.

Where the paper and its public code leave a choice, README "Baselines" lists what gensr does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from gensr.data.batching import Batch
from gensr.data.dataset import SRData
from gensr.errors import ConfigError
from gensr.models.base import ModelConfig, ModelOutput, SRModel
from gensr.models.baselines.words import WordVocabularyArtifacts, build_vocabulary, word_table
from gensr.tensor import drop_leading_padding, masked_mean, masked_softmax

REC, SRC = 1, 2  # Batch.hist_behaviour codes
@dataclass
class UniSARConfig(ModelConfig):
    """UniSAR's settings; defaults are its published Amazon settings where they exist."""

    max_his_len: int = 60  # the mixed window (published: 30 rec + 30 search interactions)
    hidden: int = 64  # "final embedding size" of items, queries and users
    id_dim: int = 32  # item and user ID embedding width (before the linear map to hidden)
    word_dim: int = 32  # query word embedding width
    max_query_words: int = 16
    item_text_words: bool = False  # add the mean of the item text's word embeddings
    max_item_words: int = 16
    n_layers: int = 1  # layers of every transformer and fusion decoder
    n_heads: int = 2
    dropout: float = 0.1
    causal_transitions: bool = False  # global transformer sees only earlier other-type items
    user_embedding: bool = True
    # contrastive alignment (published Amazon: q-i temperature 0.1 weight 0.1, history 0.1/0.01)
    q_i_cl_temp: float = 0.1
    q_i_cl_weight: float = 0.1
    q_i_cl_pairs: int = 256  # history (query, item) pairs per batch (a random subset)
    q_i_cl_negatives: int = 256  # sampled negative items and queries per batch
    his_cl_temp: float = 0.1
    his_cl_weight: float = 0.01
    # multi-task prediction
    src_loss_weight: float = 0.01  # published Amazon value (KuaiSAR: 0.1)
    ple_shared_experts: int = 4
    ple_task_experts: int = 4
    ple_expert_dim: int = 64
    tower_dims: list[int] = field(default_factory=lambda: [128, 64])
    head_dims: list[int] = field(default_factory=lambda: [200, 80])


# --- attention blocks that never produce NaN ----------------------------------------------
class MaskedAttention(nn.Module):
    """Multi-head attention with an explicit (B, Lq, Lk) boolean mask, True = may attend.

    A query with no allowed key receives zeros (not NaN): in the global transformer a rec
    position in a history without any search interaction has no transition to read."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"model.hidden ({dim}) must be divisible by model.n_heads ({heads})")
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, allowed: torch.Tensor
                ) -> torch.Tensor:
        b, lq, d = x.shape
        lk = memory.shape[1]
        dh = d // self.heads
        q = self.query(x).view(b, lq, self.heads, dh).transpose(1, 2)
        k = self.key(memory).view(b, lk, self.heads, dh).transpose(1, 2)
        v = self.value(memory).view(b, lk, self.heads, dh).transpose(1, 2)
        weights = masked_softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), allowed[:, None])
        y = self.drop(weights) @ v
        return self.out(y.transpose(1, 2).reshape(b, lq, d))


class FeedForward(nn.Module):
    """Position-wise FFN of width = hidden with ReLU (PyTorch's transformer layer defaults)."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class EncoderLayer(nn.Module):
    """Post-norm transformer encoder layer: x = norm(x + attn(x)); x = norm(x + ffn(x))."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attention = MaskedAttention(dim, heads, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.drop(self.attention(x, x, allowed)))
        return self.norm2(x + self.drop(self.ffn(x)))


class DecoderLayer(nn.Module):
    """Post-norm decoder layer: self-attention, cross-attention to ``memory``, FFN."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.self_attention = MaskedAttention(dim, heads, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attention = MaskedAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, self_allowed: torch.Tensor,
                cross_allowed: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.drop(self.self_attention(x, x, self_allowed)))
        x = self.norm2(x + self.drop(self.cross_attention(x, memory, cross_allowed)))
        return self.norm3(x + self.drop(self.ffn(x)))


class Encoder(nn.Module):
    """A stack of :class:`EncoderLayer` with learned positions (right-aligned: most recent
    interaction = last position, as histories are left-padded)."""

    def __init__(self, dim: int, heads: int, layers: int, dropout: float, max_len: int) -> None:
        super().__init__()
        self.position = nn.Embedding(max_len, dim)
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, dropout) for _ in range(layers))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.position.weight[-x.shape[1]:]
        for layer in self.layers:
            x = layer(x, allowed)
        return x


class Decoder(nn.Module):
    """A stack of :class:`DecoderLayer` (the cross-fusion of one behaviour type)."""

    def __init__(self, dim: int, heads: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, dropout) for _ in range(layers))

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor,
                memory_mask: torch.Tensor) -> torch.Tensor:
        self_allowed = mask[:, None, :] & mask[:, :, None]
        cross_allowed = memory_mask[:, None, :] & mask[:, :, None]
        for layer in self.layers:
            x = layer(x, memory, self_allowed, cross_allowed)
        return x


def padding_allowed(mask: torch.Tensor) -> torch.Tensor:
    """(B, L) valid positions -> (B, L, L): valid queries attend to every valid key."""
    return mask[:, :, None] & mask[:, None, :]


def transition_mask(types: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """The global transformer's attention mask (B, L, L), True = query i may attend to key j.

    ``types`` (B, L) holds behaviour codes (1 rec, 2 src, 0 padding). Same-type masking: a
    position attends only to valid positions of the **other** type (never to its own type,
    never to padding); ``causal`` further restricts it to earlier positions."""
    valid = types > 0
    allowed = (types[:, :, None] != types[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    if causal:
        n = types.shape[1]
        allowed = allowed & torch.ones(n, n, dtype=torch.bool, device=types.device).tril()
    return allowed


def split_by_type(types: torch.Tensor, code: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of behaviour ``code`` per row, in order, left-padded: (index, mask) (B, Ls).

    ``index`` gathers from the mixed sequence; columns that are padding in every row are
    dropped (at least one column is kept)."""
    n = types.shape[1]
    is_type = types == code
    key = torch.where(is_type, torch.arange(1, n + 1, device=types.device), 0)
    order = torch.sort(key, dim=1, stable=True).indices  # others first, then type in order
    mask = is_type.gather(1, order)
    index, mask = drop_leading_padding(mask, order, mask)
    return index, mask


def gather_positions(x: torch.Tensor, index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` (B, L, d) at ``index`` (B, Ls), zero where ``mask`` is False."""
    out = x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))
    return out * mask[..., None].to(out.dtype)


class TargetAttention(nn.Module):
    """Bilinear attention pooling of a history with the candidate as query:
    a_j = softmax_j(h_jᵀ W e_c), pooled = Σ_j a_j h_j (zeros for an empty history)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, dim))
        nn.init.xavier_normal_(self.weight)

    def forward(self, history: torch.Tensor, mask: torch.Tensor, target: torch.Tensor
                ) -> torch.Tensor:
        """``history`` (B, L, d), ``mask`` (B, L), ``target`` (B, C, d) -> (B, C, d)."""
        scores = torch.einsum("bld,de,bce->bcl", history, self.weight, target)
        return masked_softmax(scores, mask[:, None, :]) @ history


class BilinearInfoNCE(nn.Module):
    """UniSAR's contrastive score: tanh(aᵀ W b) / τ with a learnable temperature τ."""

    def __init__(self, dim: int, temperature: float) -> None:
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"contrastive temperatures must be > 0, got {temperature}")
        self.weight = nn.Parameter(torch.empty(dim, dim))
        nn.init.xavier_normal_(self.weight)
        self.temperature = nn.Parameter(torch.tensor(float(temperature)))

    def logits(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(N, d) x (M, d) -> (N, M)."""
        return torch.tanh(a @ self.weight @ b.T) / self.temperature.clamp(min=1e-3)

    def pairs(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Scores of matching rows (N,)."""
        return torch.tanh(((a @ self.weight) * b).sum(-1)) / self.temperature.clamp(min=1e-3)


def mlp(dims: list[int], dropout: float, *, last_activation: bool) -> nn.Sequential:
    """Linear layers through ``dims`` with ReLU + dropout between (and after, if asked)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if last_activation or i < len(dims) - 2:
            layers += [nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class PLE(nn.Module):
    """One progressive-layered-extraction layer (Tang et al. 2020) with per-task towers.

    Each task mixes its own experts and the shared experts with a softmax gate computed from
    the input, then runs its tower. Rows go only through their task's gate and tower."""

    def __init__(self, in_dim: int, expert_dim: int, shared: int, specific: int,
                 tower_dims: list[int], dropout: float, tasks: int = 2) -> None:
        super().__init__()
        def expert() -> nn.Module:
            return mlp([in_dim, expert_dim], dropout, last_activation=True)

        self.shared = nn.ModuleList(expert() for _ in range(shared))
        self.specific = nn.ModuleList(
            nn.ModuleList(expert() for _ in range(specific)) for _ in range(tasks))
        self.gates = nn.ModuleList(nn.Linear(in_dim, shared + specific) for _ in range(tasks))
        self.towers = nn.ModuleList(
            mlp([expert_dim, *tower_dims], dropout, last_activation=True) for _ in range(tasks))
        self.out_dim = tower_dims[-1] if tower_dims else expert_dim

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        """``x`` (N, in_dim) rows of one ``task`` -> (N, out_dim)."""
        experts = [e(x) for e in self.specific[task]] + [e(x) for e in self.shared]
        stacked = torch.stack(experts, dim=1)  # (N, E, expert_dim)
        gate = torch.softmax(self.gates[task](x), dim=-1)
        return self.towers[task]((gate[..., None] * stacked).sum(1))


@dataclass
class HistoryState:
    """The candidate-independent part of UniSAR for a batch (also what the tests inspect)."""

    tokens: torch.Tensor  # (B, L, d) history vectors (item, + query for search)
    types: torch.Tensor  # (B, L) 1 rec, 2 src, 0 pad
    global_out: torch.Tensor  # (B, L, d) the global (transition) transformer's output
    rec_index: torch.Tensor  # (B, Lr) positions of rec interactions, left-padded
    rec_mask: torch.Tensor
    src_index: torch.Tensor  # (B, Ls)
    src_mask: torch.Tensor
    rec_own: torch.Tensor  # (B, Lr, d) rec transformer: rec -> rec
    src_own: torch.Tensor  # (B, Ls, d) src transformer: src -> src
    src_to_rec: torch.Tensor  # (B, Lr, d) global output at rec positions (reads src items)
    rec_to_src: torch.Tensor  # (B, Ls, d) global output at src positions (reads rec items)
    rec_fused: torch.Tensor  # (B, Lr, d) rec history after reading the src->rec transitions
    src_fused: torch.Tensor  # (B, Ls, d) src history after reading the rec->src transitions


class UniSAR(WordVocabularyArtifacts, SRModel):
    """UniSAR: rec/src/global transformers, transition fusion, alignment, PLE (see module)."""

    name = "unisar"
    vocab_file = "unisar_words.json"
    config_class = UniSARConfig

    def __init__(self, config: UniSARConfig, data: SRData, *,
                 vocabulary: list[str] | None = None) -> None:
        super().__init__(config, data)
        d = config.hidden
        for name in ("hidden", "id_dim", "word_dim", "max_query_words", "max_item_words",
                     "n_layers", "n_heads", "ple_shared_experts", "ple_task_experts",
                     "ple_expert_dim", "max_his_len"):
            if getattr(config, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(config, name)}")
        if d % config.n_heads:
            raise ConfigError(f"model.hidden ({d}) must be divisible by model.n_heads "
                              f"({config.n_heads})")
        self.vocabulary = vocabulary if vocabulary is not None else build_vocabulary(
            data, config.item_text_words)
        index = {w: i + 1 for i, w in enumerate(self.vocabulary)}
        self.register_buffer("query_words", word_table(data.query_text, index,
                                                       config.max_query_words),
                             persistent=False)
        self.n_queries = data.n_queries
        # inputs
        self.item_id = nn.Embedding(data.n_items + 1, config.id_dim, padding_idx=0)
        self.words = nn.Embedding(len(self.vocabulary) + 1, config.word_dim, padding_idx=0)
        item_in = config.id_dim
        if config.item_text_words:
            self.register_buffer("item_words", word_table(data.item_text, index,
                                                          config.max_item_words),
                                 persistent=False)
            item_in += config.word_dim
        self.item_proj = nn.Linear(item_in, d)
        self.query_proj = nn.Linear(config.word_dim, d)
        self.user_id = nn.Embedding(data.n_users + 1, config.id_dim) \
            if config.user_embedding else None
        self.user_proj = nn.Linear(config.id_dim, d) if config.user_embedding else None
        self.rec_query = nn.Parameter(torch.empty(1, d))  # stands in for a rec instance's query
        # extraction
        args = (d, config.n_heads, config.n_layers, config.dropout, config.max_his_len)
        self.rec_encoder = Encoder(*args)
        self.src_encoder = Encoder(*args)
        self.global_encoder = Encoder(*args)
        # fusion: rec history reads src->rec transitions; src history reads rec->src ones
        self.src_to_rec_fusion = Decoder(d, config.n_heads, config.n_layers, config.dropout)
        self.rec_to_src_fusion = Decoder(d, config.n_heads, config.n_layers, config.dropout)
        # alignment
        self.query_item_cl = BilinearInfoNCE(d, config.q_i_cl_temp)
        self.rec_history_cl = BilinearInfoNCE(d, config.his_cl_temp)
        self.src_history_cl = BilinearInfoNCE(d, config.his_cl_temp)
        # prediction
        self.rec_pooling = TargetAttention(d)
        self.src_pooling = TargetAttention(d)
        self.ple = PLE(5 * d, config.ple_expert_dim, config.ple_shared_experts,
                       config.ple_task_experts, list(config.tower_dims), config.dropout)
        self.heads = nn.ModuleList(
            mlp([self.ple.out_dim, *config.head_dims, 1], config.dropout, last_activation=False)
            for _ in range(2))
        for emb in (self.item_id, self.words, self.user_id):
            if emb is not None:
                nn.init.xavier_normal_(emb.weight)
                if emb.padding_idx is not None:
                    with torch.no_grad():
                        emb.weight[emb.padding_idx].zero_()
        nn.init.xavier_normal_(self.rec_query)
        # the learned positions of every encoder and decoder, as the official code initialises
        # them (xavier normal; left at torch's N(0, 1) they outweighed the item and query
        # vectors tenfold: benchmarks/results/reference_check.md)
        for module in self.modules():
            if isinstance(module, (Encoder, Decoder)) and hasattr(module, "position"):
                nn.init.xavier_normal_(module.position.weight)

    # --- inputs ----------------------------------------------------------------------------
    def _mean_words(self, ids: torch.Tensor) -> torch.Tensor:
        return masked_mean(self.words(ids), ids > 0)

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """tanh(W [id embedding (; mean text words)]) of item ids (any shape); 0 for padding."""
        x = self.item_id(items)
        if self.config.item_text_words:
            x = torch.cat([x, self._mean_words(self.item_words[items])], dim=-1)
        return torch.tanh(self.item_proj(x)) * (items > 0)[..., None].to(x.dtype)

    def query_vectors(self, queries: torch.Tensor) -> torch.Tensor:
        """tanh(W mean(word embeddings)) of query ids (any shape); 0 for id 0 (no query)."""
        x = torch.tanh(self.query_proj(self._mean_words(self.query_words[queries])))
        return x * (queries > 0)[..., None].to(x.dtype)

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        if self.user_id is None or self.user_proj is None:
            return torch.zeros(users.shape[0], self.config.hidden, device=users.device)
        return torch.tanh(self.user_proj(self.user_id(users)))

    # --- extraction and fusion ---------------------------------------------------------------
    def encode_history(self, batch: Batch) -> HistoryState:
        """Extraction (rec, src and global transformers) and fusion, once per instance."""
        cfg: UniSARConfig = self.config  # type: ignore[assignment]
        batch = batch.last(self.history_window)
        items = batch.hist_item
        types = batch.hist_behaviour * (items > 0)
        queries = batch.hist_query
        items, types, queries = drop_leading_padding(items > 0, items, types, queries)
        tokens = self.item_vectors(items) + self.query_vectors(queries * (types == SRC))
        global_out = self.global_encoder(tokens, transition_mask(types, cfg.causal_transitions))
        rec_index, rec_mask = split_by_type(types, REC)
        src_index, src_mask = split_by_type(types, SRC)
        rec_own = self.rec_encoder(gather_positions(tokens, rec_index, rec_mask),
                                   padding_allowed(rec_mask))
        src_own = self.src_encoder(gather_positions(tokens, src_index, src_mask),
                                   padding_allowed(src_mask))
        src_to_rec = gather_positions(global_out, rec_index, rec_mask)
        rec_to_src = gather_positions(global_out, src_index, src_mask)
        rec_fused = self.src_to_rec_fusion(rec_own, src_to_rec, rec_mask, rec_mask)
        src_fused = self.rec_to_src_fusion(src_own, rec_to_src, src_mask, src_mask)
        return HistoryState(tokens, types, global_out, rec_index, rec_mask, src_index,
                            src_mask, rec_own, src_own, src_to_rec, rec_to_src, rec_fused,
                            src_fused)

    def features(self, batch: Batch, state: HistoryState | None = None) -> torch.Tensor:
        """(B, C, 5·hidden): [rec interest, src interest, candidate, user, query] per
        candidate — the shared representation the PLE layer and task heads read."""
        state = state if state is not None else self.encode_history(batch)
        cand = self.item_vectors(batch.candidates)  # (B, C, d)
        b, c, d = cand.shape
        rec_interest = self.rec_pooling(state.rec_fused, state.rec_mask, cand)
        src_interest = self.src_pooling(state.src_fused, state.src_mask, cand)
        user = self.user_vectors(batch.user)[:, None].expand(b, c, d)
        query = torch.where((batch.task == 1)[:, None], self.query_vectors(batch.query),
                            self.rec_query.expand(b, d))[:, None].expand(b, c, d)
        return torch.cat([rec_interest, src_interest, cand, user, query], dim=-1)

    def _logits(self, batch: Batch, state: HistoryState | None = None) -> torch.Tensor:
        x = self.features(batch, state)
        b, c, _ = x.shape
        logits = x.new_zeros((b, c))
        for task in (0, 1):
            rows = batch.task == task
            if bool(rows.any()):
                rows_x = x[rows].reshape(-1, x.shape[-1])
                out = self.heads[task](self.ple(rows_x, task)).view(-1, c)
                logits[rows] = out.to(logits.dtype)
        return logits

    # --- alignment losses --------------------------------------------------------------------
    def query_item_loss(self, batch: Batch) -> torch.Tensor | None:
        """Query–item contrastive loss over the history's (query, clicked item) pairs."""
        cfg: UniSARConfig = self.config  # type: ignore[assignment]
        pos = (batch.hist_behaviour == SRC) & (batch.hist_item > 0) & (batch.hist_query > 0)
        if not bool(pos.any()) or self.n_queries < 1:
            return None
        items, queries = batch.hist_item[pos], batch.hist_query[pos]
        if len(items) > cfg.q_i_cl_pairs:
            keep = torch.randperm(len(items), device=items.device)[: cfg.q_i_cl_pairs]
            items, queries = items[keep], queries[keep]
        k = cfg.q_i_cl_negatives
        neg_items = torch.randint(1, self.n_items + 1, (k,), device=items.device)
        neg_queries = torch.randint(1, self.n_queries + 1, (k,), device=items.device)
        q, i = self.query_vectors(queries), self.item_vectors(items)
        cl = self.query_item_cl

        def one_way(a: torch.Tensor, b: torch.Tensor, negs: torch.Tensor, a_ids: torch.Tensor,
                    neg_ids: torch.Tensor) -> torch.Tensor:
            neg_logits = cl.logits(a, negs).masked_fill(a_ids[:, None] == neg_ids[None],
                                                        float("-inf"))
            logits = torch.cat([cl.pairs(a, b)[:, None], neg_logits], dim=1)
            return F.cross_entropy(logits, torch.zeros(len(a), dtype=torch.long,
                                                       device=a.device))

        to_item = one_way(q, i, self.item_vectors(neg_items), items, neg_items)
        to_query = one_way(i, q, self.query_vectors(neg_queries), queries, neg_queries)
        return 0.5 * (to_item + to_query)

    @staticmethod
    def _pair_nce(cl: BilinearInfoNCE, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """SimCLR-style: a_i's positive is b_i, negatives every other a and b of the batch."""
        n = a.shape[0]
        z = torch.cat([a, b], dim=0)
        logits = cl.logits(z, z)
        logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device),
                                    float("-inf"))
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
        return F.cross_entropy(logits, target)

    def history_loss(self, state: HistoryState) -> torch.Tensor | None:
        """History contrastive loss: own-type encoding vs transition encoding, per type."""
        parts = []
        for own, trans, mask, cl in (
            (state.rec_own, state.src_to_rec, state.rec_mask, self.rec_history_cl),
            (state.src_own, state.rec_to_src, state.src_mask, self.src_history_cl),
        ):
            rows = mask.any(1)
            if int(rows.sum()) >= 2:
                parts.append(self._pair_nce(cl, masked_mean(trans[rows], mask[rows]),
                                            masked_mean(own[rows], mask[rows])))
        return sum(parts) if parts else None  # type: ignore[return-value]

    # --- analysis hooks --------------------------------------------------------------------
    def representation(self, batch: Batch) -> torch.Tensor:
        """(B, C, 5·hidden): the features both tasks' PLE gates, experts and heads read."""
        return self.features(batch)

    def shared_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The global (transition) transformer's first self-attention block."""
        attention = self.global_encoder.layers[0].attention
        return [(f"global_encoder.layers.0.attention.{n}", p)
                for n, p in attention.named_parameters()]

    # --- the model interface ---------------------------------------------------------------
    def score(self, batch: Batch) -> torch.Tensor:
        return self._logits(batch)

    @property
    def reads_user_ids(self) -> bool:
        return bool(self.config.user_embedding)

    def loss(self, batch: Batch) -> ModelOutput:
        cfg: UniSARConfig = self.config  # type: ignore[assignment]
        if batch.labels is None:
            raise ValueError("UniSAR.loss needs a batch with labels")
        state = self.encode_history(batch)
        logits = self._logits(batch, state)
        bce = F.binary_cross_entropy_with_logits(logits, batch.labels, reduction="none")
        loss = logits.new_zeros(())
        logs: dict[str, float] = {}
        for task, name, weight in ((0, "rec", 1.0), (1, "src", cfg.src_loss_weight)):
            rows = batch.task == task
            if bool(rows.any()):
                part = bce[rows].mean()
                loss = loss + weight * part
                logs[f"loss_{name}"] = float(part.detach())
        if cfg.q_i_cl_weight > 0:
            l_qi = self.query_item_loss(batch)
            if l_qi is not None:
                loss = loss + cfg.q_i_cl_weight * l_qi
                logs["loss_q_i_cl"] = float(l_qi.detach())
        if cfg.his_cl_weight > 0:
            l_his = self.history_loss(state)
            if l_his is not None:
                loss = loss + cfg.his_cl_weight * l_his
                logs["loss_his_cl"] = float(l_his.detach())
        return ModelOutput(loss, logs)
