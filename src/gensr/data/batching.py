"""The one batch format every model consumes, and the instance tables that produce it.

An *instance* is (user, history cut point ``seq``, task, query, candidates). Training instances
hold a positive and ``k`` sampled negatives with 0/1 labels; evaluation instances hold the 100
stored candidates. Models see only :class:`Batch`: trainer, evaluator, ``compare`` and
``serve`` never special-case a model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import polars as pl
import torch

from gensr.data.candidates import (
    InteractedSet,
    bm25_hard_negatives,
    bm25_query_index,
    sample_negatives,
)
from gensr.data.dataset import SRData
from gensr.data.schema import TASK_INDEX
from gensr.errors import DataError

#: where hard training negatives come from (TrainSampler, train.hard_source)
HARD_SOURCES: tuple[str, ...] = ("bm25", "category", "cf")


@dataclass
class Batch:
    """A batch of B instances with C candidates each (all LongTensor unless noted).

    user (B,), task (B,) 0=rec 1=src, query (B,) 0 = none,
    hist_item / hist_behaviour / hist_query (B, L) left-padded with 0 (most recent last;
    behaviour 1 = rec, 2 = src), candidates (B, C) item ids,
    labels (B, C) float 0/1 or None, target_pos (B,) or None (evaluation).
    """

    user: torch.Tensor
    task: torch.Tensor
    query: torch.Tensor
    hist_item: torch.Tensor
    hist_behaviour: torch.Tensor
    hist_query: torch.Tensor
    candidates: torch.Tensor
    labels: torch.Tensor | None = None
    target_pos: torch.Tensor | None = None

    @property
    def hist_mask(self) -> torch.Tensor:
        """(B, L) True where a history position holds an interaction."""
        return self.hist_item > 0

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{
            f.name: (None if getattr(self, f.name) is None
                     else getattr(self, f.name).to(device, non_blocking=True))
            for f in fields(self)
        })

    def last(self, length: int) -> Batch:
        """This batch with its history cut to the last ``length`` positions (itself when it
        holds no more): how a model or retriever that reads a shorter window than the batch
        carries takes its own."""
        if self.hist_item.shape[1] <= length:
            return self
        keep = slice(self.hist_item.shape[1] - length, None)
        return replace(self, hist_item=self.hist_item[:, keep],
                       hist_behaviour=self.hist_behaviour[:, keep],
                       hist_query=self.hist_query[:, keep])

    def select(self, index: torch.Tensor) -> Batch:
        """The instances at ``index`` (rows)."""
        return Batch(**{
            f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[index])
            for f in fields(self)
        })


@dataclass
class InstanceTable:
    """Instances as numpy arrays; :meth:`batches` turns slices into :class:`Batch` objects."""

    user: np.ndarray
    task: np.ndarray
    query: np.ndarray
    seq: np.ndarray
    candidates: np.ndarray  # (N, C)
    labels: np.ndarray | None = None  # (N, C)
    target_pos: np.ndarray | None = None  # (N,)
    instance_id: np.ndarray | None = None  # (N,) the stored instance ids (evaluation)

    def __len__(self) -> int:
        return len(self.user)

    @classmethod
    def from_candidates(cls, frame: pl.DataFrame) -> InstanceTable:
        """From a stored ``candidates_{split}.parquet`` frame."""
        cands = list_matrix(frame["candidates"])
        return cls(
            user=frame["user_id"].to_numpy().astype(np.int64),
            task=np.where(frame["task"].to_numpy() == "rec", 0, 1).astype(np.int64),
            query=frame["query_id"].fill_null(0).to_numpy().astype(np.int64),
            seq=frame["seq"].to_numpy().astype(np.int64),
            candidates=cands,
            target_pos=frame["target_pos"].to_numpy().astype(np.int64),
            instance_id=frame["instance_id"].to_numpy().astype(np.int64),
        )

    def subset(self, index: np.ndarray) -> InstanceTable:
        return InstanceTable(**{
            f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[index])
            for f in fields(self)
        })

    def batches(
        self,
        data: SRData,
        batch_size: int,
        max_his_len: int,
        *,
        order: np.ndarray | None = None,
        start: int = 0,
    ) -> Iterator[Batch]:
        """Yield batches in ``order`` (default: stored order), from batch number ``start``."""
        order = np.arange(len(self)) if order is None else order
        for b in range(start * batch_size, len(order), batch_size):
            yield self.make_batch(data, order[b : b + batch_size], max_his_len)

    def make_batch(self, data: SRData, index: np.ndarray, max_his_len: int) -> Batch:
        """The instances at ``index``, each with its last ``max_his_len`` interactions
        before its ``seq`` (:meth:`SequenceStore.history`, already left-padded)."""
        items, beh, queries = data.sequences.history(self.user[index], self.seq[index],
                                                     max_his_len)
        return pack_batch(
            user=self.user[index], task=self.task[index], query=self.query[index],
            hist_item=items, hist_behaviour=beh, hist_query=queries,
            candidates=self.candidates[index],
            labels=None if self.labels is None else self.labels[index],
            target_pos=None if self.target_pos is None else self.target_pos[index],
        )


def left_pad(rows: Sequence[Sequence[int]], length: int) -> np.ndarray:
    """(len(rows), length) int64: each row's last ``length`` values right-aligned, 0 before
    them (the history layout of :class:`Batch`: most recent last)."""
    out = np.zeros((len(rows), length), dtype=np.int64)
    if length > 0:
        for i, row in enumerate(rows):
            k = min(len(row), length)
            if k:
                out[i, length - k:] = row[len(row) - k:]
    return out


def pack_batch(*, user: Any, task: Any, query: Any, hist_item: Any, hist_behaviour: Any,
               hist_query: Any, candidates: Any = None, length: int | None = None,
               labels: Any = None, target_pos: Any = None) -> Batch:
    """One :class:`Batch` from per-instance values: the one place histories are packed.

    ``user``, ``task``, ``query`` (B,) and ``candidates`` (B, C): numpy int64 arrays or
    tensors (taken as they are) or lists of ints; ``candidates`` None = a (B, 1) column of
    0 (for a retriever, which ignores candidates, or a reranker that puts the retrieved
    items in: :func:`gensr.eval.rerank.rerank_batch`). ``hist_*``: (B, L) arrays already
    left-padded, or with ``length`` one sequence per instance, oldest first, of which the
    last ``length`` are kept and left-padded with 0 (:func:`left_pad`). ``labels`` become
    float."""
    if length is not None:
        hist_item, hist_behaviour, hist_query = (left_pad(h, length) for h in
                                                 (hist_item, hist_behaviour, hist_query))
    user = _tensor(user)
    return Batch(
        user=user, task=_tensor(task), query=_tensor(query),
        hist_item=_tensor(hist_item), hist_behaviour=_tensor(hist_behaviour),
        hist_query=_tensor(hist_query),
        candidates=(torch.zeros((len(user), 1), dtype=torch.long) if candidates is None
                    else _tensor(candidates)),
        labels=None if labels is None else _tensor(labels).float(),
        target_pos=None if target_pos is None else _tensor(target_pos),
    )


def _tensor(values: Any) -> torch.Tensor:
    """A tensor of ``values``: a tensor as it is, a numpy array shared (``from_numpy``), a
    list as int64."""
    if isinstance(values, torch.Tensor):
        return values
    if isinstance(values, np.ndarray):
        return torch.from_numpy(values)
    return torch.tensor(values, dtype=torch.long)


def tasks_present(table: InstanceTable) -> tuple[str, ...]:
    """The tasks that have at least one instance in ``table``."""
    return tuple(t for t, i in TASK_INDEX.items() if bool((table.task == i).any()))


def list_matrix(column: pl.Series) -> np.ndarray:
    """A list column whose rows all have the same length as an (N, C) int64 array (read from
    the flat values, without Python lists)."""
    n = len(column)
    if n == 0:
        return np.zeros((0, 0), dtype=np.int64)
    lengths = column.list.len()
    width = int(lengths[0])
    if int(lengths.min()) != width or int(lengths.max()) != width:
        raise ValueError("the rows of the list column differ in length")
    return column.explode().to_numpy().astype(np.int64).reshape(n, width)


def eval_instances(data: SRData, split: str, tasks: tuple[str, ...] | None = None,
                   max_instances: int | None = None, seed: int = 0,
                   candidates: str = "uniform") -> InstanceTable:
    """The stored evaluation instances of a split, optionally a seeded subset, restricted to
    ``tasks``.

    The subset (``max_instances``, ``seed``) is drawn from the instances of *both* tasks and
    only then restricted to ``tasks``, so every model sees the same instances of a task
    whatever tasks it serves (a rec-only model gets the rec instances of the two-task
    subset). ``candidates`` names the candidate strategy; every strategy stores the same
    instances in the same order, so a subset (same seed) holds the same instances whatever
    the strategy."""
    table = seeded_subset(InstanceTable.from_candidates(data.candidates(split, candidates)),
                          max_instances, seed)
    if tasks is not None:
        table = table.subset(np.isin(table.task, [TASK_INDEX[t] for t in tasks]))
    return table


def seeded_subset(table: InstanceTable, max_instances: int | None, seed: int = 0
                  ) -> InstanceTable:
    """``max_instances`` rows of ``table`` drawn with ``seed``, in stored order (all of them
    when ``max_instances`` is None or not smaller than the table)."""
    if max_instances is None or len(table) <= max_instances:
        return table
    rng = np.random.default_rng(seed)
    return table.subset(np.sort(rng.choice(len(table), size=max_instances, replace=False)))


class TrainSampler:
    """Training instances: each training-split interaction as a positive with ``k`` negatives.

    Negatives are drawn uniformly from items the user never interacted with *in the training
    split* (what a model may know at training time; the user's valid and test items are future
    events and stay eligible, as in the LightGCN sampler), anew each epoch from
    ``(seed, epoch)``, so a resumed run sees exactly the batches an uninterrupted one would.

    ``hard_negatives`` > 0 replaces that many of an instance's ``k`` negatives by items drawn
    (uniformly, anew each epoch) from a pool of *hard* items the user never interacted with in
    training and that are not the positive; ``hard_source`` picks the pool:

    ``bm25``
        search instances only: the query's ``hard_pool`` highest-BM25 items (the evaluation's
        ``bm25-hard`` index: item text + category path, k1 1.2, b 0.75). The same generator
        as the ``bm25-hard`` evaluation candidates, so it shares their bias.
    ``category``
        both tasks: the items of the positive's own category (full path); a row whose
        category has too few such items keeps uniform draws for the rest.
    ``cf``
        both tasks: the user's ``hard_pool`` best items by a CF table's user · item score,
        given as ``user_pool`` (user id -> item ids, best first; the trainer computes it from
        the model's LightGCN table): the items a reranker of that retriever will meet.

    The other ``k - hard_negatives`` negatives stay uniform, and the uniform draw is the same
    stream as without hard negatives.
    """

    def __init__(self, data: SRData, n_negatives: int, seed: int = 0, *,
                 hard_negatives: int = 0, hard_pool: int = 100, hard_source: str = "bm25",
                 user_pool: np.ndarray | None = None) -> None:
        train = data.train().sort("user_id", "seq", "behaviour")
        self.data = data
        self.k = int(n_negatives)
        self.seed = int(seed)
        self.user = train["user_id"].to_numpy().astype(np.int64)
        self.item = train["item_id"].to_numpy().astype(np.int64)
        self.task = np.where(train["behaviour"].to_numpy() == "rec", 0, 1).astype(np.int64)
        self.query = train["query_id"].fill_null(0).to_numpy().astype(np.int64)
        self.seq = train["seq"].to_numpy().astype(np.int64)
        self.interacted = InteractedSet(self.user, self.item, data.n_items)
        self.hard = int(hard_negatives)
        self.source = hard_source
        if not 0 <= self.hard <= self.k:
            raise DataError(f"hard_negatives must be in [0, n_negatives = {self.k}], "
                            f"got {self.hard}")
        if hard_source not in HARD_SOURCES:
            raise DataError(f"hard_source must be one of {', '.join(HARD_SOURCES)}, got "
                            f"{hard_source!r}")
        if hard_source == "cf" and self.hard and user_pool is None:
            raise DataError("hard_source cf needs each user's top CF items (user_pool)")
        self.hard_rows = np.zeros(0, dtype=np.int64)  # the rows that get hard negatives
        self.pool = np.zeros((0, 0), dtype=np.int32)  # bm25 / cf: each hard row's pool
        self.members = self.offsets = self.row_category = None  # category: the groups
        if not self.hard:
            return
        if hard_source == "bm25":
            self.hard_rows = np.nonzero((self.task == 1) & (self.query > 0))[0]
            if len(self.hard_rows):
                self.pool = self._bm25_pool(int(hard_pool))
        elif hard_source == "category":
            self.hard_rows = np.arange(len(self.user))
            self._category_groups()
        else:
            self.hard_rows = np.arange(len(self.user))
            self.pool = self._cf_pool(np.asarray(user_pool), int(hard_pool))

    def _bm25_pool(self, size: int) -> np.ndarray:
        """(hard rows, pool): each search row's query's top-BM25 items the user never
        touched."""
        if size < self.hard:
            raise DataError(f"hard_pool ({size}) must be >= hard_negatives ({self.hard})")
        users = self.user[self.hard_rows]
        room = int((self.data.n_items - self.interacted.n_interacted(users)).min())
        size = min(size, room)
        if size < self.hard:
            raise DataError(f"a user has only {room} items it never interacted with in "
                            f"training, fewer than hard_negatives ({self.hard})")
        bm25, terms = bm25_query_index(self.data)
        tiebreak = np.random.default_rng([self.seed, 2]).permutation(self.data.n_items)
        pool = bm25_hard_negatives(bm25, terms, users, self.query[self.hard_rows],
                                   self.interacted, size, tiebreak)
        return pool.astype(np.int32)

    def _category_groups(self) -> None:
        """Items grouped by category path: ``members`` sorted by category, ``offsets`` the
        start of each category's run (one past the end last), each row's category."""
        names = np.asarray(self.data.item_category, dtype=object)  # row 0 = padding
        _, codes = np.unique(names.astype(str), return_inverse=True)
        codes[0] = -1  # item 0 is padding: in no category
        order = np.argsort(codes[1:], kind="stable") + 1
        self.members = order.astype(np.int64)
        counts = np.bincount(codes[1:], minlength=int(codes.max()) + 1)
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.row_category = codes[self.item].astype(np.int64)

    def _cf_pool(self, user_pool: np.ndarray, size: int) -> np.ndarray:
        """(rows, pool): each row's user's first ``size`` CF items that the user never
        touched in training (0 where fewer are left)."""
        if user_pool.ndim != 2 or len(user_pool) <= int(self.user.max(initial=0)):
            raise DataError("user_pool must be a (n_users + 1, width) array of item ids")
        users = np.arange(len(user_pool))
        ok = (user_pool > 0) & ~self.interacted.contains(users, user_pool)
        keep = ok & (np.cumsum(ok, axis=1) <= size)
        pool = np.zeros((len(user_pool), size), dtype=np.int32)
        for u in np.nonzero(keep.any(axis=1))[0]:
            got = user_pool[u][keep[u]]
            pool[u, : len(got)] = got
        return pool[self.user]

    def __len__(self) -> int:
        return len(self.user)

    def epoch(self, epoch: int) -> tuple[InstanceTable, np.ndarray]:
        """The epoch's instances and the shuffled order to visit them in."""
        rng = np.random.default_rng([self.seed, epoch])
        negatives = sample_negatives(rng, self.user, self.interacted, self.k)
        if self.hard and len(self.hard_rows):
            negatives[self.hard_rows] = self._with_hard(
                negatives[self.hard_rows], np.random.default_rng([self.seed, epoch, 1]))
        cands = np.concatenate([self.item[:, None], negatives], axis=1)
        labels = np.zeros(cands.shape, dtype=np.float32)
        labels[:, 0] = 1.0
        table = InstanceTable(user=self.user, task=self.task, query=self.query, seq=self.seq,
                              candidates=cands, labels=labels)
        return table, rng.permutation(len(table))

    def _draw_hard(self, rng: np.random.Generator) -> np.ndarray:
        """(hard rows, hard) hard items, distinct per row; 0 where a row's pool ran out."""
        h, rows = self.hard, self.hard_rows
        if self.source != "category":  # a fixed pool per row (0-padded at its end)
            size = (self.pool > 0).sum(axis=1)
            keys = rng.random(self.pool.shape)
            keys[self.pool <= 0] = 2.0  # padding last
            pick = np.argsort(keys, axis=1)[:, :h]
            hard = np.take_along_axis(self.pool, pick, axis=1).astype(np.int64)
            hard[np.arange(h)[None, :] >= size[:, None]] = 0
            return hard
        # category: draw positions in the row's category, keep items the user never touched,
        # that are not the positive and not drawn before; a few rounds, then give up (0)
        cat = self.row_category[rows]
        start, count = self.offsets[cat], self.offsets[cat + 1] - self.offsets[cat]
        hard = np.zeros((len(rows), h), dtype=np.int64)
        filled = np.zeros(len(rows), dtype=np.int64)
        for _ in range(8):
            todo = np.nonzero(filled < h)[0]
            if not len(todo):
                break
            draw = self.members[start[todo, None]
                                + (rng.random((len(todo), 2 * h)) * count[todo, None])
                                .astype(np.int64)]
            bad = (self.interacted.contains(self.user[rows[todo]], draw)
                   | (draw == self.item[rows[todo], None]))
            for j, r in enumerate(todo):
                for item in draw[j][~bad[j]]:
                    if filled[r] == h:
                        break
                    if item not in hard[r, : filled[r]]:
                        hard[r, filled[r]] = item
                        filled[r] += 1
        return hard

    def _with_hard(self, uniform: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Hard rows' negatives: ``hard`` hard items, then the last ``k - hard`` uniform ones;
        a missing hard item (0) takes one of the row's unused uniform draws (its first
        ``hard``), and a uniform item that is also one of the row's hard ones is swapped for
        another unused draw, so the negatives stay distinct."""
        h = self.hard
        hard = self._draw_hard(rng)
        rest = uniform[:, h:].copy()
        clash = (rest[:, :, None] == hard[:, None, :]).any(axis=2)
        for row in np.nonzero(clash.any(axis=1) | (hard == 0).any(axis=1))[0]:
            spare = [x for x in uniform[row, :h] if x not in hard[row] and x not in rest[row]]
            for col in np.nonzero(hard[row] == 0)[0]:
                hard[row, col] = spare.pop(0)
            for col in np.nonzero(clash[row])[0]:
                rest[row, col] = spare.pop(0)
        return np.concatenate([hard, rest], axis=1)
