"""The retrieval interface: the top N items of the whole catalogue for a batch of instances.

A :class:`Retriever` reads the same :class:`~gensr.data.Batch` as the models (user, task,
query, history; its ``candidates`` are ignored) and returns a :class:`Retrieved`: (B, N) item
ids best first and their retrieval scores. Items in the batch's :class:`Exclusion` (what the
user already consumed: in evaluation the items of the splits before the evaluated one, never
the target; in serving the request's history) are never returned. When fewer than N items
are eligible (a small catalogue, or BM25 matching fewer items) the row is padded with item 0
and score ``-inf``.

Ties: exact retrieval orders by score, then by item id (lower first), so its top N equals a
brute-force sort of every item by (-score, id). Where the N-th score is shared with items that
did not fit, :attr:`Retrieved.tied_out` lists them: an evaluation counts a tie across the cut
as full ranking does (every tied item equally likely to be in, :mod:`gensr.eval.rerank`),
not by id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from gensr.data.batching import Batch
from gensr.errors import DataError


@dataclass
class Retrieved:
    """(B, N) item ids (0 = padding) and their retrieval scores (``-inf`` at padding), each
    row best first. ``tied_out``: the eligible items left out although their score equals
    their row's N-th (the cut went through a tie), as (row, item) pairs; None = none."""

    items: torch.Tensor
    scores: torch.Tensor
    tied_out: Exclusion | None = None

    def to(self, device: torch.device | str) -> Retrieved:
        return Retrieved(self.items.to(device), self.scores.to(device), self.tied_out)

    @property
    def valid(self) -> torch.Tensor:
        """(B, N) True where a slot holds an item."""
        return self.items > 0

    def counts(self) -> torch.Tensor:
        """(B,) how many items each row holds."""
        return self.valid.sum(1)


@dataclass
class Exclusion:
    """Items never to retrieve, as (row in the batch, item id) pairs."""

    rows: np.ndarray
    items: np.ndarray

    @classmethod
    def from_lists(cls, lists: Sequence[Sequence[int] | np.ndarray]) -> Exclusion:
        """One list of item ids per batch row."""
        sizes = [len(x) for x in lists]
        rows = np.repeat(np.arange(len(lists), dtype=np.int64), sizes)
        items = (np.concatenate([np.asarray(x, dtype=np.int64) for x in lists])
                 if sum(sizes) else np.zeros(0, np.int64))
        return cls(rows, items)

    @classmethod
    def empty(cls) -> Exclusion:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.rows)

    def max_per_row(self, n_rows: int) -> int:
        """The most items excluded from one row."""
        return int(np.bincount(self.rows, minlength=n_rows).max()) if len(self.rows) else 0

    def apply(self, scores: torch.Tensor) -> torch.Tensor:
        """Set the excluded (row, item) entries of (B, n_items + 1) ``scores`` to ``-inf`` (in
        place; returns ``scores``)."""
        if len(self.rows):
            dev = scores.device
            scores[torch.from_numpy(self.rows).to(dev), torch.from_numpy(self.items).to(dev)] = (
                float("-inf"))
        return scores


def top_n(scores: torch.Tensor, n: int) -> Retrieved:
    """The ``n`` best of (B, n_items + 1) scores (column 0 = padding, never returned; ``-inf``
    entries are not eligible), by score then item id: exactly a stable sort of every item.

    Selects with ``torch.topk`` and settles ties at the N-th score by item id, so it costs
    O(items) per row, not a full sort.
    """
    # float64 scores (BM25) stay float64: rounding to float32 could tie distinct scores
    scores = scores.clone() if scores.is_floating_point() else scores.float()
    scores[:, 0] = float("-inf")
    scores = torch.nan_to_num(scores, nan=float("-inf"), neginf=float("-inf"))
    b, width = scores.shape
    n = int(min(n, width - 1))
    if n <= 0 or b == 0:
        z = torch.zeros((b, max(n, 0)), dtype=torch.long, device=scores.device)
        return Retrieved(z, z.float().fill_(float("-inf")))
    # the common case, distinct finite scores down to the (N+1)-th: topk's own order is the
    # stable sort's, so one call settles it (ties anywhere there take the general path)
    vals, idx = torch.topk(scores, min(n + 1, width), dim=1)
    head = vals[:, :n]
    if bool(torch.isfinite(head).all()) and bool((vals[:, 1:] != vals[:, :-1]).all()):
        return Retrieved(idx[:, :n], head)
    kth = head.min(1, keepdim=True).values
    above = scores > kth
    tied = scores == kth
    need = n - above.sum(1, keepdim=True)
    # ties at the N-th score: the lowest item ids first; the others are recorded
    chosen = above | (tied & (tied.cumsum(1) <= need))
    idx = chosen.nonzero()  # row-major: each row's chosen items in id order
    items = idx[:, 1].view(b, n)
    got = scores.gather(1, items)
    order = torch.sort(got, dim=1, descending=True, stable=True).indices
    items, got = items.gather(1, order), got.gather(1, order)
    pad = ~torch.isfinite(got)
    left = (tied & ~chosen & torch.isfinite(kth)).nonzero().cpu().numpy()
    return Retrieved(items.masked_fill(pad, 0), got.masked_fill(pad, float("-inf")),
                     Exclusion(left[:, 0], left[:, 1]) if len(left) else None)


def merge_top_n(candidates: torch.Tensor, scores: torch.Tensor, n: int,
                exclude: Exclusion | None = None) -> Retrieved:
    """The ``n`` best of a (B, K) set of candidate ids with their scores (ids <= 0 or repeated
    ids are dropped, as are excluded ones), by score then item id."""
    candidates = candidates.long()
    scores = scores.clone() if scores.is_floating_point() else scores.float()
    scores = torch.nan_to_num(scores, nan=float("-inf"), neginf=float("-inf"))
    scores[candidates <= 0] = float("-inf")
    if exclude is not None and len(exclude):
        # (row, item) pairs to drop: compare each candidate with its row's excluded items
        ex = torch.zeros_like(scores, dtype=torch.bool)
        rows = torch.from_numpy(exclude.rows).to(scores.device)
        items = torch.from_numpy(exclude.items).to(scores.device)
        hit = candidates[rows] == items[:, None]  # (E, K)
        r, c = hit.nonzero(as_tuple=True)
        ex[rows[r], c] = True
        scores[ex] = float("-inf")
    # sort by item id first, so the stable sort by score breaks ties by id; repeats dropped
    by_id = torch.sort(candidates, dim=1, stable=True)
    cands, s = by_id.values, scores.gather(1, by_id.indices)
    repeat = torch.zeros_like(cands, dtype=torch.bool)
    repeat[:, 1:] = cands[:, 1:] == cands[:, :-1]
    s = s.masked_fill(repeat, float("-inf"))
    ranked = torch.sort(s, dim=1, descending=True, stable=True).indices
    order, rest = ranked[:, :n], ranked[:, n:]
    items, got = cands.gather(1, order), s.gather(1, order)
    pad = ~torch.isfinite(got)
    items, got = items.masked_fill(pad, 0), got.masked_fill(pad, float("-inf"))
    tied_out = None
    if rest.shape[1] and items.shape[1]:  # candidates cut at a score equal to the N-th
        kth = got[:, -1:]
        left = (s.gather(1, rest) == kth) & torch.isfinite(kth)
        r, c = left.nonzero(as_tuple=True)
        if len(r):
            tied_out = Exclusion(r.cpu().numpy(), cands.gather(1, rest)[r, c].cpu().numpy())
    if items.shape[1] < n:  # fewer candidates than n: pad the width
        extra = n - items.shape[1]
        items = torch.cat([items, items.new_zeros((items.shape[0], extra))], 1)
        got = torch.cat([got, got.new_full((got.shape[0], extra), float("-inf"))], 1)
    return Retrieved(items, got, tied_out)


class Retriever:
    """Retrieves the top N items of the catalogue for a batch (see the module docstring).

    Subclasses set ``name`` (how specs and answers name it), ``tasks``, ``max_his_len`` (the
    history length its batches need), ``reads_user_ids`` (its scores depend on
    ``batch.user``) and implement :meth:`retrieve`.
    """

    kind: ClassVar[str] = "retriever"
    reads_query_text: ClassVar[bool] = False

    def __init__(self, name: str, tasks: tuple[str, ...], known_queries: dict[str, int],
                 max_his_len: int = 0) -> None:
        self.name = name
        self.tasks = tuple(tasks)
        self.max_his_len = int(max_his_len)
        self.known_queries = known_queries

    #: "none": ignores users; "optional": a known user helps, none is fine (lightgcn: the
    #: history's mean vector then); "required": needs a known user
    user_rule: str = "none"

    @property
    def reads_user_ids(self) -> bool:
        return self.user_rule != "none"

    def retrieve(self, batch: Batch, n: int, exclude: Exclusion | None = None) -> Retrieved:
        """The top ``n`` eligible items of each instance of ``batch``."""
        raise NotImplementedError

    def problem(self, user: int, n_history: int) -> str | None:
        """Why a request with canonical ``user`` (0 = none) and ``n_history`` interactions
        cannot be served, or None."""
        return None

    def add_queries(self, texts: list[str]) -> list[int]:
        """Query ids of ``texts`` for this retriever's batches (see
        :meth:`gensr.models.base.SRModel.add_queries`): a retriever that reads query text
        registers unseen ones; the others take any id."""
        if not self.reads_query_text:
            return [self.known_queries.get(t, 0) for t in texts]
        unknown = [t for t in dict.fromkeys(texts) if t not in self.known_queries]
        if unknown:
            raise DataError(f"the {self.name} retriever cannot read unseen query texts: "
                            f"{unknown[0]!r}")
        return [self.known_queries[t] for t in texts]

    def to(self, device: torch.device | str) -> Retriever:
        """Move what the retriever computes with to ``device`` (returns self)."""
        return self

    def describe(self) -> dict:
        """What the retriever is, for model cards and result files."""
        return {"name": self.name, "kind": self.kind, "tasks": list(self.tasks)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, tasks={self.tasks})"
