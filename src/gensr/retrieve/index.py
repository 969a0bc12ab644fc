"""Vector indexes over item embeddings: exact inner product (the default) or an approximate
HNSW graph (FAISS, the ``[ann]`` extra) for large catalogues.

The approximate index is built once and saved beside the vectors' run
(``RUN_DIR/retrieval/NAME.hnsw.faiss`` with a JSON card holding the SHA-256 of the vectors it
indexes); a later load reuses it while the vectors are unchanged and rebuilds it otherwise.
It only proposes candidates: their scores are recomputed exactly, and excluded items are
dropped after the search (which fetches that many more).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gensr.errors import ConfigError

log = logging.getLogger("gensr.retrieve")
INDEX_KINDS = ("exact", "hnsw")
ANN_EXTRA = "pip install 'gensr[ann]' (faiss-cpu)"


def require_faiss():
    """The faiss module, or a one-line error naming the extra."""
    try:
        import faiss  # type: ignore[import-not-found]
    except ImportError:
        raise ConfigError(f"--index hnsw needs FAISS: {ANN_EXTRA}") from None
    return faiss


def vectors_digest(vectors: np.ndarray) -> str:
    """SHA-256 of float32 vectors (shape included)."""
    arr = np.ascontiguousarray(vectors, dtype=np.float32)
    digest = hashlib.sha256(str(arr.shape).encode())
    digest.update(arr.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class HNSWSettings:
    """HNSW graph settings: neighbours per node, build and search beam widths."""

    m: int = 32
    ef_construction: int = 200
    ef_search: int = 256


class HNSWIndex:
    """FAISS ``IndexHNSWFlat`` (inner product) over items 1..n; ids = row numbers."""

    kind = "hnsw"

    def __init__(self, index, settings: HNSWSettings, digest: str) -> None:
        self.index = index
        self.settings = settings
        self.digest = digest

    @classmethod
    def build(cls, vectors: np.ndarray, settings: HNSWSettings | None = None) -> HNSWIndex:
        """Index rows 1.. of (n_items + 1, d) ``vectors`` (row 0 = padding, left out)."""
        faiss = require_faiss()
        settings = settings or HNSWSettings()
        arr = np.ascontiguousarray(vectors, dtype=np.float32)
        index = faiss.IndexHNSWFlat(arr.shape[1], settings.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = settings.ef_construction
        if len(arr) > 1:
            index.add(arr[1:])
        return cls(index, settings, vectors_digest(arr))

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """(B, k) item ids proposed for each query (0 where the graph found fewer)."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = int(max(1, min(k, self.index.ntotal)))
        self.index.hnsw.efSearch = max(self.settings.ef_search, k)
        _, found = self.index.search(q, k)
        return np.where(found >= 0, found + 1, 0).astype(np.int64)

    # --- persistence ---------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write the index and its card (``.json``) atomically."""
        faiss = require_faiss()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        try:
            faiss.write_index(self.index, tmp)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        card = {"kind": self.kind, "sha256_vectors": self.digest, "ntotal": self.index.ntotal,
                "dim": self.index.d, "settings": asdict(self.settings),
                "faiss": getattr(faiss, "__version__", "?")}
        path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> HNSWIndex | None:
        """A saved index, or None when there is none (or it cannot be read)."""
        card_file = path.with_suffix(".json")
        if not (path.is_file() and card_file.is_file()):
            return None
        faiss = require_faiss()
        try:
            card = json.loads(card_file.read_text())
            index = faiss.read_index(str(path))
        except (OSError, ValueError, RuntimeError):
            return None
        return cls(index, HNSWSettings(**card.get("settings", {})), card.get("sha256_vectors", ""))


def load_or_build(vectors: np.ndarray, path: Path | None,
                  settings: HNSWSettings | None = None) -> HNSWIndex:
    """The saved HNSW index at ``path`` if it indexes exactly ``vectors`` with ``settings``,
    else a new one, saved there (a read-only place only logs a warning)."""
    settings = settings or HNSWSettings()
    digest = vectors_digest(vectors)
    if path is not None:
        saved = HNSWIndex.load(path)
        if saved is not None and saved.digest == digest and (
                saved.settings.m, saved.settings.ef_construction) == (
                settings.m, settings.ef_construction):
            saved.settings = settings  # ef_search is a search-time setting
            return saved
    index = HNSWIndex.build(vectors, settings)
    if path is not None:
        try:
            index.save(path)
            log.info("gensr: built and saved the HNSW index %s", path)
        except OSError as err:
            log.warning("gensr: could not save the HNSW index to %s (%s); it stays in memory",
                        path, err)
    return index
