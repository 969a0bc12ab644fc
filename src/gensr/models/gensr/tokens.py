"""Token tables: the first N tokens of every item text (and query), cached in the data directory.

GenSR reads an item through its first ``item_text_tokens`` tokens (the semantic view and the
candidate vectors) and a query through its first ``max_query_tokens``. Tokenising millions of
item texts takes minutes, and every model build (train, evaluate, serve, a resumed run) would
do it again, so the tables are kept in ``DATA_DIR/cache/``, one ``.npy`` file per table,
named by what decides its content: the kind (items or queries), the width, a fingerprint of
the tokenizer (its full serialised form: vocabulary, normaliser, pre-tokeniser) and the
data's fingerprint. A table is built once per (data, tokenizer, width); a changed tokenizer
or width builds a new one. The cache is an optimisation only: a data directory that cannot
be written to is tokenised in memory as before, and deleting ``cache/`` is always safe. A
table is written to a temporary file renamed into place; one that is damaged all the same
(cut short by a copy, overwritten) is built again after a one-line ``note:``, never refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gensr.errors import damaged
from gensr.files import first_line
from gensr.outputs import note, write_atomic

CACHE_DIR = "cache"
CHUNK = 1 << 16  # texts tokenised per call (bounds the Python lists alive at once)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything that decides how ``tokenizer`` splits text."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # a fast tokenizer: its whole serialised pipeline, less the
        # truncation and padding settings that each call sets anew
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
        h.update(json.dumps(state, sort_keys=True).encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
        h.update(json.dumps(getattr(tokenizer, "init_kwargs", {}), sort_keys=True,
                            default=str).encode())
    h.update(str(tokenizer.pad_token_id).encode())
    return h.hexdigest()[:16]


def token_table(tokenizer: Any, texts: list[str], width: int) -> torch.Tensor:
    """(len(texts), width) token ids of each text's first ``width`` tokens (no special
    tokens), padded with the pad id; row 0 stays padding (texts[0] is the padding entry)."""
    pad = tokenizer.pad_token_id
    table = np.full((len(texts), width), pad, dtype=np.int64)
    for start in range(1, len(texts), CHUNK):
        part = texts[start : start + CHUNK]
        encoded = tokenizer(part, add_special_tokens=False, truncation=True,
                            max_length=width)["input_ids"]
        lengths = np.fromiter((len(ids) for ids in encoded), dtype=np.int64, count=len(part))
        flat = np.fromiter((t for ids in encoded for t in ids), dtype=np.int64,
                           count=int(lengths.sum()))
        rows = np.repeat(np.arange(start, start + len(part)), lengths)
        cols = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        table[rows, cols] = flat
    return torch.from_numpy(table)


def cached_token_table(tokenizer: Any, texts: list[str], width: int, *,
                       data_dir: Path | None, data_fingerprint: str, kind: str) -> torch.Tensor:
    """:func:`token_table`, read from / written to ``data_dir/cache/`` when possible."""
    if data_dir is None:
        return token_table(tokenizer, texts, width)
    name = (f"tokens-{kind}-w{width}-tok{tokenizer_fingerprint(tokenizer)}"
            f"-data{data_fingerprint}.npy")
    path = Path(data_dir) / CACHE_DIR / name
    if path.is_file():
        table = _read_cached(path, (len(texts), width))
        if table is not None:
            return table
    table = token_table(tokenizer, texts, width)
    _save(path, table.numpy().astype(np.int32))
    return table


def _read_cached(path: Path, shape: tuple[int, int]) -> torch.Tensor | None:
    """The cached table at ``path``; None, after a one-line note, when the file is damaged
    (cut short, overwritten) or not of ``shape``: it is built again and replaced."""
    again = "it is a cache: building it again"
    try:
        cached = np.load(path, allow_pickle=False)
    except Exception as err:  # numpy raises OSError, ValueError or EOFError on a bad file
        note(str(damaged(path, ".npy table", first_line(err), hint=again)))
        return None
    if cached.shape == shape and np.issubdtype(cached.dtype, np.integer):
        return torch.from_numpy(cached.astype(np.int64))
    note(f"{path}: holds a {cached.dtype} table of shape {cached.shape}, not {shape}; {again}")
    return None


def _save(path: Path, array: np.ndarray) -> None:
    """Write atomically (:func:`gensr.outputs.write_atomic`); give up quietly when the data
    directory cannot be written (read-only, full): the cache is an optimisation only."""
    def write(tmp: Path) -> None:
        with tmp.open("wb") as fh:  # a file object: np.save would add ".npy" to a name
            np.save(fh, array, allow_pickle=False)

    try:
        path.parent.mkdir(exist_ok=True)
        write_atomic(path, write, None)
    except OSError:
        pass
