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

    ``hard_negatives`` > 0 replaces that many of each *search* instance's ``k`` negatives by
    items drawn (uniformly, anew each epoch) from its query's ``hard_pool`` highest-BM25 items
    that the user never interacted with in training: the evaluation's ``bm25-hard`` index
    (item text + category path, k1 1.2, b 0.75) on the training queries. Recommendation
    instances, and the other ``k - hard_negatives`` negatives, stay uniform; the uniform draw
    is the same stream as without hard negatives.
    """

    def __init__(self, data: SRData, n_negatives: int, seed: int = 0, *,
                 hard_negatives: int = 0, hard_pool: int = 100) -> None:
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
        if not 0 <= self.hard <= self.k:
            raise DataError(f"hard_negatives must be in [0, n_negatives = {self.k}], "
                            f"got {self.hard}")
        self.src_rows = np.nonzero((self.task == 1) & (self.query > 0))[0]
        self.pool = np.zeros((0, 0), dtype=np.int32)
        if self.hard and len(self.src_rows):
            self.pool = self._hard_pool(int(hard_pool))

    def _hard_pool(self, size: int) -> np.ndarray:
        """(n search rows, pool): each row's query's top-BM25 items the user never touched."""
        if size < self.hard:
            raise DataError(f"hard_pool ({size}) must be >= hard_negatives ({self.hard})")
        users = self.user[self.src_rows]
        room = int((self.data.n_items - self.interacted.n_interacted(users)).min())
        size = min(size, room)
        if size < self.hard:
            raise DataError(f"a user has only {room} items it never interacted with in "
                            f"training, fewer than hard_negatives ({self.hard})")
        bm25, terms = bm25_query_index(self.data)
        tiebreak = np.random.default_rng([self.seed, 2]).permutation(self.data.n_items)
        pool = bm25_hard_negatives(bm25, terms, users, self.query[self.src_rows],
                                   self.interacted, size, tiebreak)
        return pool.astype(np.int32)

    def __len__(self) -> int:
        return len(self.user)

    def epoch(self, epoch: int) -> tuple[InstanceTable, np.ndarray]:
        """The epoch's instances and the shuffled order to visit them in."""
        rng = np.random.default_rng([self.seed, epoch])
        negatives = sample_negatives(rng, self.user, self.interacted, self.k)
        if len(self.pool):  # hard negatives asked for, and search rows to give them to
            negatives[self.src_rows] = self._with_hard(
                negatives[self.src_rows], np.random.default_rng([self.seed, epoch, 1]))
        cands = np.concatenate([self.item[:, None], negatives], axis=1)
        labels = np.zeros(cands.shape, dtype=np.float32)
        labels[:, 0] = 1.0
        table = InstanceTable(user=self.user, task=self.task, query=self.query, seq=self.seq,
                              candidates=cands, labels=labels)
        return table, rng.permutation(len(table))

    def _with_hard(self, uniform: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Search rows' negatives: ``hard`` pool items, then the last ``k - hard`` uniform
        ones; a uniform item that is also one of the row's hard ones is swapped for one of
        the row's unused uniform draws (its first ``hard``), so the negatives stay distinct."""
        h = self.hard
        pick = np.argsort(rng.random(self.pool.shape), axis=1)[:, :h]
        hard = np.take_along_axis(self.pool, pick, axis=1).astype(np.int64)
        rest = uniform[:, h:].copy()
        clash = (rest[:, :, None] == hard[:, None, :]).any(axis=2)
        for row in np.nonzero(clash.any(axis=1))[0]:
            spare = [x for x in uniform[row, :h] if x not in hard[row]]
            for col in np.nonzero(clash[row])[0]:
                rest[row, col] = spare.pop(0)
        return np.concatenate([hard, rest], axis=1)
