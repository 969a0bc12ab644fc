"""Serving: rank candidates with a trained run, from Python, the CLI or over HTTP.

* :class:`Ranker` (``Ranker.from_run(RUN_DIR)``): ``rank(history, candidates, query=None,
  top_k=None)`` and ``rank_many(requests)``, in the data's original item ids;
* ``gensr rank RUN_DIR ...``: one ranking printed as a table;
* ``gensr serve RUN_DIR``: the HTTP service (:mod:`gensr.serve.app`, needs the ``[serve]``
  extra: fastapi + uvicorn, imported only there).

See docs/serving.md.
"""

from gensr.serve.errors import (
    OverloadedError,
    RequestError,
    ServeDependencyError,
    TaskNotServedError,
    UnknownItemError,
)
from gensr.serve.ranker import (
    Interaction,
    Limits,
    Ranker,
    Ranking,
    RankRequest,
    ScoredItem,
)

__all__ = [
    "Interaction",
    "Limits",
    "OverloadedError",
    "RankRequest",
    "Ranker",
    "Ranking",
    "RequestError",
    "ScoredItem",
    "ServeDependencyError",
    "TaskNotServedError",
    "UnknownItemError",
]
