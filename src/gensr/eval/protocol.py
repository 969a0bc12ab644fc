"""The evaluation protocol: every model, the same stored candidates, the same metrics.

Sampled mode (the paper's): each valid/test instance ranks its 100 stored candidates (the
target and 99 items the user never interacted with, in a shuffled order; the negatives of the
chosen candidate strategy, :mod:`gensr.data.candidates`); Recall@K and NDCG@K for K in
{1, 5, 10, 20}, per task, ties handled by :mod:`gensr.eval.metrics`.

Full-ranking mode: models that can score every item rank the whole catalogue; the items the
user interacted with in the splits before the evaluated one are masked (valid: train; test:
train and valid, RecBole's rule), the target never is.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from gensr.data.batching import TASK_INDEX, InstanceTable, eval_instances
from gensr.data.dataset import SRData
from gensr.metrics import KS, TieRule, metric_names, rank_metrics
from gensr.models.base import SRModel
from gensr.progress import progress as progress_bar
from gensr.threads import guarded

Metrics = dict[str, dict[str, float]]


def _summarise(per_task: dict[str, dict[str, list[torch.Tensor]]], ks: tuple[int, ...]
               ) -> Metrics:
    out: Metrics = {}
    for task, parts in per_task.items():
        if not parts:
            continue
        row = {name: float(torch.cat(parts[name]).mean()) for name in metric_names(ks)}
        row["n"] = int(sum(len(p) for p in parts[metric_names(ks)[0]]))
        out[task] = row
    return out


@torch.no_grad()
def evaluate(
    model: SRModel,
    data: SRData,
    split: str = "test",
    *,
    batch_size: int = 64,
    tasks: tuple[str, ...] | None = None,
    max_instances: int | None = None,
    ties: TieRule = "expected",
    ks: tuple[int, ...] = KS,
    device: torch.device | str | None = None,
    progress: bool = True,
    scores_out: str | Path | None = None,
    seed: int = 0,
    candidates: str = "uniform",
    shard: Shard | None = None,
) -> Metrics:
    """Score ``split``'s stored candidates with ``model``; metrics per task.

    Tasks the model does not serve (``model.tasks``) are skipped. ``max_instances`` takes a
    seeded subset (the same for every model). ``scores_out`` writes every instance's scores
    to a Parquet file (:func:`write_scores`). ``candidates`` names the candidate
    strategy (:mod:`gensr.data.candidates`: uniform, bm25-hard, popular). ``shard``: share
    the instances among processes (see :func:`evaluate_table`).
    """
    tasks = tuple(t for t in (tasks or ("rec", "src")) if t in model.tasks)
    if not tasks:
        return {}
    table = eval_instances(data, split, tasks=tasks, max_instances=max_instances, seed=seed,
                           candidates=candidates)
    return evaluate_table(model, data, table, batch_size=batch_size, ties=ties, ks=ks,
                          device=device, progress=progress, scores_out=scores_out,
                          desc=f"{model.name} {split}", shard=shard)


def write_scores(table: InstanceTable, scores: np.ndarray, path: str | Path) -> None:
    """One row per instance: ``instance_id`` (the id in ``candidates_{split}.parquet``, so the
    file joins back after subsetting), ``user_id``, ``task``, ``target_pos`` and ``scores``
    (one float per stored candidate, in the stored order)."""
    n = len(table)
    ids = table.instance_id if table.instance_id is not None else np.full(n, -1, np.int64)
    target = table.target_pos if table.target_pos is not None else np.full(n, -1, np.int64)
    pl.DataFrame({
        "instance_id": ids.astype(np.int64),
        "user_id": table.user.astype(np.int64),
        "task": np.where(table.task == 0, "rec", "src"),
        "target_pos": target.astype(np.int64),
        "scores": list(scores.astype(np.float32)),
    }, schema_overrides={"scores": pl.List(pl.Float32)}).write_parquet(path)


@dataclass(frozen=True)
class Shard:
    """This process's share of a table's instances when several processes evaluate together:
    instances ``index, index + count, …``; ``gather`` concatenates, in process order, a tensor
    of the same shape from every process (``accelerate``'s ``gather``)."""

    index: int
    count: int
    gather: Callable[[torch.Tensor], torch.Tensor]

    @classmethod
    def current(cls) -> Shard | None:
        """The shard of this process under ``accelerate launch`` / torchrun (None alone)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) \
                and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return None  # one process: leave accelerate's global state alone
        from accelerate import PartialState
        from accelerate.utils import gather

        state = PartialState()
        if state.num_processes == 1:
            return None
        return cls(state.process_index, state.num_processes, gather)

    def rows(self, n: int) -> np.ndarray:
        return np.arange(self.index, n, self.count)

    def merge(self, local: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
        """Every process's ``local`` rows (of :meth:`rows`) back in table order: (n, ...)."""
        per = -(-n // self.count)  # ceil: each process sends the same number of rows
        padded = local.new_zeros((per, *local.shape[1:]))
        padded[: len(local)] = local
        everything = self.gather(padded.to(device)).cpu()  # (count * per, ...)
        out = local.new_zeros((n, *local.shape[1:]))
        for rank in range(self.count):
            index = np.arange(rank, n, self.count)
            out[torch.from_numpy(index)] = everything[rank * per : rank * per + len(index)]
        return out


@torch.no_grad()
def evaluate_table(
    model: SRModel,
    data: SRData,
    table: InstanceTable,
    *,
    batch_size: int = 64,
    ties: TieRule = "expected",
    ks: tuple[int, ...] = KS,
    device: torch.device | str | None = None,
    progress: bool = True,
    scores_out: str | Path | None = None,
    desc: str = "evaluate",
    shard: Shard | None = None,
) -> Metrics:
    """Like :func:`evaluate` on an explicit :class:`InstanceTable` (used by the trainer).

    With ``shard`` (several processes), each process scores its share of the instances and
    the per-instance metrics (and scores) of all processes are put back in table order before
    the means are taken: the result is what one process computes from the same scores, on
    every process; only process 0 writes ``scores_out``."""
    values = instance_metrics(model, data, table, batch_size=batch_size, ties=ties, ks=ks,
                              device=device, progress=progress, scores_out=scores_out,
                              desc=desc, shard=shard)
    return summarise_instances(table.task, values, ks)


@torch.no_grad()
def instance_metrics(
    model: SRModel,
    data: SRData,
    table: InstanceTable,
    *,
    batch_size: int = 64,
    ties: TieRule = "expected",
    ks: tuple[int, ...] = KS,
    device: torch.device | str | None = None,
    progress: bool = True,
    scores_out: str | Path | None = None,
    desc: str = "evaluate",
    shard: Shard | None = None,
) -> dict[str, np.ndarray]:
    """Every instance's ``R@K``/``N@K`` (float64 arrays in ``table``'s order): what the
    per-task means summarise and what paired significance tests compare. ``shard``: this
    process scores its share, and the shares are merged back in table order."""
    was_training = model.training
    model.eval()
    device = torch.device(device) if device is not None else model.device
    names = metric_names(ks)
    local = table if shard is None else table.subset(shard.rows(len(table)))
    values: list[torch.Tensor] = []  # (b, M) per batch, metrics in ``names`` order
    saved: list[torch.Tensor] = []
    n_batches = (len(local) + batch_size - 1) // batch_size
    batches = local.batches(data, batch_size, model.history_window)
    # fewer CPU threads while other processes hold cores; a first look (0.2 s) when the
    # evaluation is long enough to pay for it on a quiet machine
    with guarded(device, prime_s=0.2 if n_batches >= 10 else 0.0) as guard:
        for batch in progress_bar(batches, total=n_batches, desc=desc, enabled=progress,
                                  leave=False):
            batch = batch.to(device)
            scores = model.score(batch).float()
            metrics = rank_metrics(scores, batch.target_pos, ks=ks, ties=ties)
            values.append(torch.stack([metrics[name].double() for name in names], dim=1).cpu())
            if scores_out is not None:
                saved.append(scores.cpu())
            if guard is not None:
                guard.poll()
    if was_training:
        model.train()
    n_cand = table.candidates.shape[1] if table.candidates.ndim == 2 else 0
    per_instance = torch.cat(values) if values else torch.zeros((0, len(names)),
                                                                 dtype=torch.float64)
    scores_all = (torch.cat(saved) if saved else torch.zeros((0, n_cand))) \
        if scores_out is not None else None
    if shard is not None:
        per_instance = shard.merge(per_instance, len(table), device)
        if scores_all is not None:
            scores_all = shard.merge(scores_all, len(table), device)
    if scores_all is not None and (shard is None or shard.index == 0):
        write_scores(table, scores_all.numpy(), scores_out)
    return {name: per_instance[:, j].numpy() for j, name in enumerate(names)}


def summarise_instances(task: np.ndarray, values: dict[str, np.ndarray],
                        ks: tuple[int, ...] = KS) -> Metrics:
    """Per-task means (and instance counts ``n``) of per-instance metrics; ``task`` holds
    :data:`TASK_INDEX` codes; tasks without instances are left out."""
    out: Metrics = {}
    for name, index in TASK_INDEX.items():
        sel = np.asarray(task) == index
        if not sel.any():
            continue
        row = {m: float(np.ascontiguousarray(values[m][sel]).mean()) for m in metric_names(ks)}
        row["n"] = int(sel.sum())
        out[name] = row
    return out


#: the splits whose items are masked when ranking the whole catalogue for each split
MASKED_SPLITS = {"train": (), "valid": ("train",), "test": ("train", "valid")}


def seen_before(data: SRData, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(users, items) sorted by user: what each user interacted with in the splits before
    ``split`` (valid: train; test: train and valid), masked in full ranking."""
    if split not in MASKED_SPLITS:
        raise ValueError(f"split must be one of {list(MASKED_SPLITS)}, got {split!r}")
    rows = data.interactions.filter(pl.col("split").is_in(list(MASKED_SPLITS[split])))
    users = rows["user_id"].to_numpy().astype(np.int64)
    items = rows["item_id"].to_numpy().astype(np.int64)
    order = np.argsort(users, kind="stable")
    return users[order], items[order]


def full_instances(data: SRData, split: str, tasks: tuple[str, ...],
                   max_instances: int | None = None, seed: int = 0
                   ) -> tuple[InstanceTable, np.ndarray]:
    """The split's evaluation instances for full ranking (optionally the same seeded subset as
    :func:`evaluate`) and each one's target item."""
    table = eval_instances(data, split, tasks=tasks, max_instances=max_instances, seed=seed)
    rows = np.arange(len(table))
    targets = (table.candidates[rows, table.target_pos] if len(table)
               else np.zeros(0, np.int64)).astype(np.int64)
    return table, targets


def masked_pairs(seen: tuple[np.ndarray, np.ndarray], users: np.ndarray, targets: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(rows, items) to mask for instances of ``users`` with ``targets``: each user's items
    in ``seen`` (:func:`seen_before`), except the instance's own target."""
    seen_u, seen_i = seen
    lo = np.searchsorted(seen_u, users, side="left")
    hi = np.searchsorted(seen_u, users, side="right")
    r = np.repeat(np.arange(len(users)), hi - lo)
    c = (np.concatenate([seen_i[a:b] for a, b in zip(lo, hi)]) if len(r)
         else np.zeros(0, np.int64))
    keep = c != targets[r]
    return r[keep], c[keep]


@torch.no_grad()
def evaluate_full(
    model: SRModel,
    data: SRData,
    split: str = "test",
    *,
    batch_size: int = 256,
    tasks: tuple[str, ...] | None = None,
    ks: tuple[int, ...] = KS,
    device: torch.device | str | None = None,
    progress: bool = True,
    max_instances: int | None = None,
    seed: int = 0,
) -> Metrics:
    """Full ranking over all items; the user's items of earlier splits are masked
    (:func:`seen_before`), the target never is. ``max_instances`` takes the same seeded
    subset as :func:`evaluate`."""
    if not model.supports_full_ranking:
        raise NotImplementedError(f"{model.name} cannot score every item")
    tasks = tuple(t for t in (tasks or ("rec", "src")) if t in model.tasks)
    table, targets = full_instances(data, split, tasks, max_instances, seed)
    seen = seen_before(data, split)
    was_training = model.training
    model.eval()
    device = torch.device(device) if device is not None else model.device
    per_task: dict[str, dict[str, list[torch.Tensor]]] = {
        t: {m: [] for m in metric_names(ks)} for t in TASK_INDEX
    }
    rows = np.arange(len(table))
    for start in progress_bar(range(0, len(table), batch_size), desc=f"{model.name} full {split}",
                              enabled=progress, leave=False):
        idx = rows[start : start + batch_size]
        batch = table.make_batch(data, idx, model.history_window).to(device)
        scores = model.score_all(batch).float().clone()
        scores[:, 0] = float("-inf")
        r, c = masked_pairs(seen, table.user[idx], targets[idx])
        scores[torch.from_numpy(r).to(device), torch.from_numpy(c).to(device)] = float("-inf")
        target = torch.from_numpy(targets[idx]).to(device)
        metrics = rank_metrics(scores, target, ks=ks)
        for task, index in TASK_INDEX.items():
            sel = batch.task == index
            if sel.any():
                for name, values in metrics.items():
                    per_task[task][name].append(values[sel].cpu())
    if was_training:
        model.train()
    return _summarise({t: v for t, v in per_task.items() if v[metric_names(ks)[0]]}, ks)
