"""BM25 over item text, on the ``bm25s`` library (sparse, precomputed per-term weights).

One index serves both the ``bm25`` reference scorer (the stored candidates, or every item) and
the ``bm25`` retriever (the top N items of the catalogue). Documents are the items' text (and
category path), analysed by :func:`gensr.data.text.analyze` (the same terms as the queries);
scores are Okapi BM25 with Lucene's idf, ``log(1 + (N - df + 0.5) / (df + 0.5))``, and the
term weight ``tf (k1 + 1) / (tf + k1 (1 - b + b dl / avgdl))`` — ``bm25s``'s ``lucene`` method
times the constant ``k1 + 1``, so the scores equal gensr's earlier hand-written BM25 (to
1e-15) and rank every query identically (checked on the synthetic data and amazon-scientific).
A query term repeated in the query counts once per occurrence, as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gensr.data.dataset import SRData
from gensr.data.text import analyze


class BM25Index:
    """BM25 scores of every item for analysed queries (``scores``: (n_items + 1,) float64,
    entry 0 = padding = 0)."""

    def __init__(self, data: SRData, *, k1: float = 1.2, b: float = 0.75,
                 use_category: bool = True) -> None:
        import bm25s

        self.k1, self.b = float(k1), float(b)
        self.n_items = data.n_items
        texts, cats = data.item_text, data.item_category
        docs = [analyze(texts[i] + (" " + cats[i] if use_category else ""))
                for i in range(1, data.n_items + 1)]
        self._bm25 = bm25s.BM25(k1=self.k1, b=self.b, method="lucene", dtype="float64")
        self._bm25.index(docs, show_progress=False)

    def scores(self, terms: Sequence[str]) -> np.ndarray:
        """(n_items + 1,) float64 BM25 scores of every item for the analysed ``terms``."""
        out = np.zeros(self.n_items + 1, dtype=np.float64)
        ids = self._bm25.get_tokens_ids(list(terms))
        if ids and self.n_items:
            out[1:] = self._bm25.get_scores_from_ids(ids) * (self.k1 + 1.0)
        return out

    def scores_many(self, term_lists: Sequence[Sequence[str]]) -> np.ndarray:
        """(len(term_lists), n_items + 1) float64: :meth:`scores` of each query."""
        out = np.zeros((len(term_lists), self.n_items + 1), dtype=np.float64)
        cache: dict[tuple[str, ...], np.ndarray] = {}
        for row, terms in enumerate(term_lists):
            key = tuple(terms)
            if key not in cache:
                cache[key] = self.scores(key)
            out[row] = cache[key]
        return out
