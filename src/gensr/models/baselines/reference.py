"""Reference scorers that sanity-check the protocol: random, popularity and BM25.

They need no training and implement the same :class:`~gensr.models.base.SRModel` interface,
so they sit in every comparison table beside the trained models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gensr.data.batching import Batch
from gensr.data.bm25 import BM25Index
from gensr.data.dataset import SRData
from gensr.data.text import analyze
from gensr.models.base import ModelConfig, SRModel


@dataclass
class RandomConfig(ModelConfig):
    seed: int = 0


class RandomScorer(SRModel):
    """Uniform-looking random scores: the chance level of the protocol (R@5 ≈ 0.05).

    A score is a hash of (seed, candidate, task, query, history), not a draw from a
    generator, so the same request gets the same scores in evaluation and in serving.
    """

    name = "random"
    config_class = RandomConfig
    trainable = False
    reads_query_text = False
    reads_history = False

    def _context(self, batch: Batch) -> torch.Tensor:
        """(B, 1) int64: one hashed value per instance from everything but the candidates."""
        pos = torch.arange(1, batch.hist_item.shape[1] + 1, device=batch.hist_item.device)
        hist = (_mix(batch.hist_item * 2 + batch.hist_behaviour + pos) * batch.hist_mask).sum(1)
        return _mix(_mix(batch.task + 2 * batch.query + int(self.config.seed) * 7919) + hist
                    )[:, None]

    def score(self, batch: Batch) -> torch.Tensor:
        return _unit(_mix(self._context(batch) ^ batch.candidates))

    def score_all(self, batch: Batch) -> torch.Tensor:
        items = torch.arange(self.n_items + 1, device=batch.candidates.device)[None]
        return _unit(_mix(self._context(batch) ^ items))


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 64-bit integer mixer (SplitMix64's finaliser on int64, wrapping)."""
    x = x.long() * -7046029254386353131  # 0x9E3779B97F4A7C15 as int64
    x = (x ^ (x >> 31)) * -4658895280553007687  # 0xBF58476D1CE4E5B9
    x = (x ^ (x >> 27)) * -7723592293110705685  # 0x94D049BB133111EB
    return x ^ (x >> 31)


def _unit(x: torch.Tensor) -> torch.Tensor:
    """int64 hashes -> floats in [0, 1) (24 bits)."""
    return ((x >> 20) & 0xFFFFFF).float() / float(1 << 24)


@dataclass
class PopularityConfig(ModelConfig):
    per_task: bool = True  # count rec and src interactions separately


class PopularityScorer(SRModel):
    """Training-split interaction counts of each item, per task (rec counts for rec, …)."""

    name = "pop"
    config_class = PopularityConfig
    trainable = False
    reads_query_text = False
    reads_history = False

    def __init__(self, config: PopularityConfig, data: SRData) -> None:
        super().__init__(config, data)
        if config.per_task:
            counts = np.stack([data.popularity("rec"), data.popularity("src")])
        else:
            total = data.popularity()
            counts = np.stack([total, total])
        self.register_buffer("counts", torch.from_numpy(counts).float(), persistent=False)

    def score(self, batch: Batch) -> torch.Tensor:
        return self.counts[batch.task[:, None], batch.candidates]

    def score_all(self, batch: Batch) -> torch.Tensor:
        return self.counts[batch.task]


@dataclass
class BM25Config(ModelConfig):
    k1: float = 1.2
    b: float = 0.75
    use_category: bool = True  # index the category path beside the item text


class BM25Scorer(SRModel):
    """Okapi BM25 between the query and each candidate's text (search only; on the ``bm25s``
    library, :class:`gensr.data.bm25.BM25Index`): the stored candidates, or every item."""

    name = "bm25"
    config_class = BM25Config
    tasks = ("src",)
    trainable = False
    reads_history = False

    def __init__(self, config: BM25Config, data: SRData) -> None:
        super().__init__(config, data)
        self.bm25 = BM25Index(data.item_text,
                              data.item_category if config.use_category else None,
                              k1=config.k1, b=config.b)
        self.query_terms = [analyze(q) for q in data.query_text]

    def add_queries(self, texts: list[str]) -> list[int]:
        """Analyse query texts the data does not hold and append them to ``query_terms``."""
        for text in dict.fromkeys(texts):
            if text not in self.known_queries:
                self.known_queries[text] = len(self.query_terms)
                self.query_terms.append(analyze(text))
        return super().add_queries(texts)

    def score(self, batch: Batch) -> torch.Tensor:
        cands = batch.candidates.cpu().numpy()
        out = np.zeros(cands.shape, dtype=np.float64)
        for row, qid in enumerate(batch.query.cpu().numpy()):
            out[row] = self.bm25.score(self.query_terms[qid], cands[row])
        return torch.from_numpy(out).to(batch.candidates.device)

    def score_all(self, batch: Batch) -> torch.Tensor:
        queries = batch.query.cpu().numpy()
        scores = self.bm25.scores_many([self.query_terms[q] for q in queries])
        return torch.from_numpy(scores).to(batch.candidates.device)
