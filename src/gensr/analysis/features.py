"""Model-independent input features: one vector per instance (and candidate), from the data.

The mutual-information and parameter-space analyses need an *input* X that is the same for
every model, so that models differ only in their outputs. It is built from two frozen,
model-independent item tables:

* **CF vectors** ``e^cf_i``: the LightGCN table of ``gensr pretrain-cf`` (trained on the
  training split's rec interactions only), rows = canonical item ids;
* **text vectors** ``e^txt_i`` / ``e^txt_q``: TF-IDF bags of words of item texts and query
  texts, reduced by one truncated SVD fitted on items and queries together (``text_dim``
  components, seeded), each row L2-normalised; padding and empty texts are zero vectors.

A history is the instance's last ``his_len`` interactions strictly before it (both
behaviours, as items), independent of any model's ``max_his_len``.

* :meth:`InputFeatures.pair_features` (the MI input, per instance i and candidate c)::

      X(i, c) = [ mean_j e^cf_{h_j} ; e^cf_c ; mean_j e^txt_{h_j} ; e^txt_c ; e^txt_{q_i} ]

  (e^txt_q = 0 for a rec instance, which has no query).
* :meth:`InputFeatures.task_inputs` (Fig. 3a: the paper's concatenated filtered CF and
  semantic history vectors, without any model parameters): the history vectors soft-filtered
  by the target with the parameter-free attention a_j = softmax_j(e_c · e_{h_j} / √d) (Eq. 5–6
  with W = I, W_v = I), once in the CF view and once in the text view, concatenated.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gensr.analysis.common import require
from gensr.data.batching import InstanceTable
from gensr.data.dataset import SRData
from gensr.errors import ConfigError


def text_vectors(data: SRData, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(item text vectors (n_items + 1, k), query text vectors (n_queries + 1, k)), k <= dim."""
    fe = require("sklearn.feature_extraction.text")
    dec = require("sklearn.decomposition")
    items, queries = data.item_text[1:], data.query_text[1:]
    docs = [t or "" for t in items] + [t or "" for t in queries]
    try:
        tfidf = fe.TfidfVectorizer(lowercase=True, token_pattern=r"(?u)\b\w+\b")
        matrix = tfidf.fit_transform(docs)
    except ValueError:  # no words at all
        return np.zeros((len(items) + 1, 0)), np.zeros((len(queries) + 1, 0))
    k = int(min(dim, matrix.shape[1] - 1, matrix.shape[0] - 1))
    if k < 1:
        dense = matrix.toarray()
    else:
        dense = dec.TruncatedSVD(n_components=k, random_state=seed).fit_transform(matrix)
    norms = np.linalg.norm(dense, axis=1, keepdims=True)
    dense = np.where(norms > 1e-12, dense / np.where(norms > 1e-12, norms, 1.0), 0.0)
    pad = np.zeros((1, dense.shape[1]))
    return (np.concatenate([pad, dense[: len(items)]]),
            np.concatenate([pad, dense[len(items):]]))


class InputFeatures:
    """The frozen item/query tables and the instance features built from them."""

    def __init__(self, data: SRData, cf_item: np.ndarray, *, text_dim: int = 32,
                 his_len: int = 20, seed: int = 0, cf_source: str = "") -> None:
        cf_item = np.asarray(cf_item, dtype=np.float64)
        if cf_item.shape[0] != data.n_items + 1:
            raise ConfigError(f"CF table has {cf_item.shape[0]} rows, the data needs "
                              f"{data.n_items + 1}")
        if his_len < 1:
            raise ConfigError(f"--his-len must be >= 1, got {his_len}")
        self.data = data
        self.item_cf = cf_item.copy()
        self.item_cf[0] = 0.0
        self.item_text, self.query_text = text_vectors(data, text_dim, seed)
        self.his_len = his_len
        self.cf_source = cf_source

    @classmethod
    def from_cf_path(cls, data: SRData, cf_path: str | Path, **kwargs) -> InputFeatures:
        """Features over the CF table at ``cf_path`` (checked against ``data``)."""
        from gensr.cf import CFTable

        table = CFTable.load(cf_path, data)
        return cls(data, table.item.numpy(), cf_source=str(cf_path), **kwargs)

    @property
    def dims(self) -> dict[str, int]:
        """Width of each block of :meth:`pair_features`, in order."""
        d_cf, d_t = self.item_cf.shape[1], self.item_text.shape[1]
        return {"history_cf": d_cf, "candidate_cf": d_cf, "history_text": d_t,
                "candidate_text": d_t, "query_text": d_t}

    def _history(self, table: InstanceTable) -> np.ndarray:
        items, _, _ = self.data.sequences.history(table.user, table.seq, self.his_len)
        return items  # (N, L), 0 = padding

    @staticmethod
    def _masked_mean(vectors: np.ndarray, mask: np.ndarray) -> np.ndarray:
        count = mask.sum(axis=1, keepdims=True)
        return (vectors * mask[..., None]).sum(axis=1) / np.maximum(count, 1)

    def pair_features(self, table: InstanceTable) -> np.ndarray:
        """X(i, c) for every instance and candidate, rows in (instance, candidate) order:
        (N·C, 2·d_cf + 3·d_text) float32 (see the module docstring)."""
        hist = self._history(table)
        mask = hist > 0
        h_cf = self._masked_mean(self.item_cf[hist], mask)
        h_txt = self._masked_mean(self.item_text[hist], mask)
        q_txt = self.query_text[table.query]
        n, c = table.candidates.shape
        rep = lambda a: np.repeat(a, c, axis=0)  # noqa: E731
        cands = table.candidates.reshape(-1)
        return np.concatenate([
            rep(h_cf), self.item_cf[cands], rep(h_txt), self.item_text[cands], rep(q_txt),
        ], axis=1).astype(np.float32)

    def task_inputs(self, table: InstanceTable, candidates: np.ndarray | None = None
                    ) -> np.ndarray:
        """(N, d_cf + d_text): the history's CF and text vectors soft-filtered by each
        instance's candidate (default: its target) with parameter-free attention."""
        if candidates is None:
            if table.target_pos is None:
                raise ConfigError("task_inputs needs the target (evaluation instances)")
            candidates = table.candidates[np.arange(len(table)), table.target_pos]
        hist = self._history(table)
        mask = hist > 0
        parts = []
        for tab in (self.item_cf, self.item_text):
            if tab.shape[1] == 0:
                continue
            h = tab[hist]  # (N, L, d)
            e = tab[candidates]  # (N, d)
            logits = np.einsum("nld,nd->nl", h, e) / np.sqrt(tab.shape[1])
            top = np.max(np.where(mask, logits, -np.inf), axis=1, keepdims=True)
            top = np.where(np.isfinite(top), top, 0.0)  # an empty history: all weights 0
            w = np.where(mask, np.exp(np.where(mask, logits - top, 0.0)), 0.0)
            w /= np.maximum(w.sum(axis=1, keepdims=True), 1e-300)
            parts.append(np.einsum("nl,nld->nd", w, h))
        return np.concatenate(parts, axis=1).astype(np.float32)
