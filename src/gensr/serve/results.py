"""The answers of both rankers, and the bookkeeping they share to score requests in batches.

:class:`Ranking` answers a request with given candidates (:meth:`Ranker.rank
<gensr.serve.ranker.Ranker.rank>`); :class:`FullRanking`, a Ranking that also names the
retriever and the time each stage took, a full-catalogue one (:meth:`CatalogueRanker.rank
<gensr.serve.full.CatalogueRanker>`). :func:`answer_many` and :func:`score_in_groups` are
how either turns many requests into answers so that a failing request never affects the
others.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from gensr.errors import GensrError
from gensr.serve.errors import RequestError

P = TypeVar("P")
R = TypeVar("R")


@dataclass(frozen=True)
class ScoredItem:
    """A candidate and its score (higher = better)."""

    item: str
    score: float


@dataclass
class Ranking:
    """The answer to one request: candidates best first (ties keep the request's order)."""

    task: str
    items: list[ScoredItem]
    n_candidates: int

    def __iter__(self) -> Iterator[ScoredItem]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> ScoredItem:
        return self.items[index]

    @property
    def item_ids(self) -> list[str]:
        """The ranked items' original ids, best first."""
        return [s.item for s in self.items]

    def ranking_json(self) -> list[dict[str, Any]]:
        """The ranked items as ``[{"item", "score"}, ...]``, best first."""
        return [{"item": s.item, "score": s.score} for s in self.items]

    def to_dict(self) -> dict[str, Any]:
        """The JSON answer (without the model's name): task, n_candidates, ranking."""
        return {"task": self.task, "n_candidates": self.n_candidates,
                "ranking": self.ranking_json()}


@dataclass(kw_only=True)
class FullRanking(Ranking):
    """The answer to a full-catalogue request: the best ``top_k`` of the ``n_candidates``
    retrieved items, reranked (ties keep the retrieval order), the ``retriever`` that
    proposed them and the milliseconds each stage took for the batch the request was scored
    in."""

    retriever: str
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON answer (without the model's name): task, retriever, n_candidates,
        ranking, timings_ms."""
        return {"task": self.task, "retriever": self.retriever,
                "n_candidates": self.n_candidates, "ranking": self.ranking_json(),
                "timings_ms": dict(self.timings_ms)}


def best_first(scores: np.ndarray, top_k: int | None, who: str) -> np.ndarray:
    """The positions of the ``top_k`` (None: all) highest ``scores``, best first, ties in
    their given order; a RuntimeError naming ``who`` when a score is not finite."""
    if not np.isfinite(scores).all():
        raise RuntimeError(f"{who} returned non-finite scores")
    return np.argsort(-scores, kind="stable")[:top_k]


def with_index(err: GensrError, index: int, total: int) -> GensrError:
    """Prefix the message with the request's index when there are several."""
    if total > 1 and not str(err).startswith("request "):
        err.args = (f"request {index}: {err}",)
        if isinstance(err, RequestError):
            err.message = str(err)
    return err


def answer_many(requests: Sequence[Any], prepare: Callable[[Any], P],
                rank_prepared: Callable[[list[P]], Sequence[R | Exception]], *,
                return_errors: bool = False) -> list[R | Exception]:
    """Prepare every request (``prepare`` raises :class:`RequestError`), score the valid ones
    together with ``rank_prepared`` and answer in order. A request that fails does not affect
    the others: with ``return_errors`` its error takes its place in the list, otherwise the
    first error is raised (with several requests its message names the request's index)."""
    total = len(requests)
    prepared: list[P | GensrError] = []
    for i, req in enumerate(requests):
        try:
            prepared.append(prepare(req))
        except RequestError as err:
            prepared.append(with_index(err, i, total))
    valid = [p for p in prepared if not isinstance(p, GensrError)]
    scored = iter(rank_prepared(valid)) if valid else iter(())
    out: list[R | Exception] = []
    for i, p in enumerate(prepared):
        if isinstance(p, GensrError):
            out.append(p)
            continue
        result = next(scored)
        if isinstance(result, RequestError):
            result = with_index(result, i, total)
        out.append(result)
    if not return_errors:
        for result in out:
            if isinstance(result, Exception):
                raise result
    return out


def score_in_groups(items: Sequence[P], key: Callable[[P], Hashable], size: int,
                    score: Callable[[list[P]], list[R]]) -> list[R | Exception]:
    """``score`` the items in batches of one ``key`` (groups in order of first appearance, at
    most ``size`` items a batch): each item's answer, in order. When a batch fails its items
    are scored one by one, so only the culprit's answer is its error."""
    groups: dict[Hashable, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(key(item), []).append(i)
    results: dict[int, R | Exception] = {}
    for members in groups.values():
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            out: list[R | Exception] = []
            try:
                out.extend(score([items[i] for i in chunk]))
            except Exception:  # noqa: BLE001 - retry one by one: isolate the culprit
                out = []
                for i in chunk:
                    try:
                        out.extend(score([items[i]]))
                    except Exception as err:  # noqa: BLE001
                        out.append(err)
            results.update(zip(chunk, out))
    return [results[i] for i in range(len(items))]
