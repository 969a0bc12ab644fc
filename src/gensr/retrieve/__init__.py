"""Retrieval: the top N items of the whole catalogue, for a reranker to score (full-catalogue
evaluation, ``POST /v1/recommend`` and ``/v1/search``).

* :class:`~gensr.retrieve.base.Retriever`: ``retrieve(batch, n, exclude) -> Retrieved``
  ((B, N) item ids best first and their scores), for the batches every model reads;
* the retrievers (:mod:`gensr.retrieve.retrievers`): LightGCN (the CF table), any trained run
  that ranks every item (SASRec, TEM), BM25 (``bm25s``), popularity, and unions;
* specs (:mod:`gensr.retrieve.specs`): ``--retriever lightgcn``, ``sasrec=RUN_DIR``, ``bm25``,
  ``bm25+tem=RUN_DIR``, …, built by :func:`build_retriever`;
* exact inner-product search by default, an approximate HNSW index (FAISS, the ``[ann]``
  extra) saved beside the run (:mod:`gensr.retrieve.index`).

See docs/serving.md ("Full-catalogue ranking").
"""

from gensr.retrieve.base import Exclusion, Retrieved, Retriever, top_n
from gensr.retrieve.specs import RetrieverSet, build_retriever, default_specs, parse_spec

__all__ = ["Exclusion", "Retrieved", "Retriever", "RetrieverSet", "build_retriever",
           "default_specs", "parse_spec", "top_n"]
