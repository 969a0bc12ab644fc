"""Okapi BM25 over the items' text: one index for the ``bm25`` reference scorer and the
``bm25-hard`` evaluation candidates (:mod:`gensr.data.candidates`), so both rank items alike.

An item's document is its text plus (``use_category``) its category path, analysed with
:func:`gensr.data.text.analyze`; a query's score for an item is the sum over the query's terms
of idf(t) · tf·(k1 + 1) / (tf + k1·(1 − b + b·len/avglen)), with idf(t) = ln(1 + (N − df +
0.5)/(df + 0.5)).
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from gensr.data.text import analyze


class BM25Index:
    """Postings of every analysed term: (item ids ascending, BM25 term weights)."""

    def __init__(self, texts: list[str], categories: list[str] | None = None, *,
                 k1: float = 1.2, b: float = 0.75) -> None:
        """``texts``/``categories`` are indexed by item id, entry 0 being the padding."""
        self.n_items = len(texts) - 1
        postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        lengths = np.zeros(self.n_items + 1)
        for item in range(1, self.n_items + 1):
            doc = texts[item] + (" " + categories[item] if categories is not None else "")
            terms = analyze(doc)
            lengths[item] = len(terms)
            tf: dict[str, int] = defaultdict(int)
            for t in terms:
                tf[t] += 1
            for t, n in tf.items():
                postings[t].append((item, n))
        avgdl = max(lengths[1:].mean(), 1e-9) if self.n_items else 1.0
        self.index: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for t, plist in postings.items():
            items = np.fromiter((p[0] for p in plist), dtype=np.int64, count=len(plist))
            tf_arr = np.fromiter((p[1] for p in plist), dtype=np.float64, count=len(plist))
            idf = math.log(1 + (self.n_items - len(plist) + 0.5) / (len(plist) + 0.5))
            norm = k1 * (1 - b + b * lengths[items] / avgdl)
            self.index[t] = (items, idf * tf_arr * (k1 + 1) / (tf_arr + norm))

    def score(self, terms: list[str], items: np.ndarray) -> np.ndarray:
        """BM25 of the analysed query ``terms`` for each item id in ``items`` (any shape)."""
        out = np.zeros(items.shape, dtype=np.float64)
        for term in terms:
            hit = self.index.get(term)
            if hit is None:
                continue
            postings, weights = hit
            pos = np.minimum(np.searchsorted(postings, items), len(postings) - 1)
            found = postings[pos] == items
            out[found] += weights[pos[found]]
        return out

    def score_all(self, terms: list[str]) -> np.ndarray:
        """(n_items + 1,) BM25 of every item for ``terms`` (0 at the padding id 0)."""
        out = np.zeros(self.n_items + 1, dtype=np.float64)
        for term in terms:
            hit = self.index.get(term)
            if hit is not None:
                out[hit[0]] += hit[1]  # a term's postings name each item once
        return out
