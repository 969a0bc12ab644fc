"""The one training loop every trainable model goes through (nanoGPT-style: all of it here).

Per optimizer step: a batch of ``batch_size`` instances (a positive and ``n_negatives`` sampled
negatives each, labels 1/0), ``model.loss(batch)`` under autocast, backward, grad-norm
clipping, AdamW step (torch's fused kernel where it has one; the model's ``param_groups``: no
decay on biases and norms), linear warm-up then linear decay. Every ``eval_every`` steps:
:func:`evaluate_table` on a seeded subset of the valid instances, the best model saved with
``save_pretrained(RUN_DIR)``, early stopping after ``patience`` validations without
improvement, and the resumable checkpoint ``RUN_DIR/last/`` (see
:mod:`gensr.train.checkpoint`). A run stops at the first of: early stopping, ``max_steps``,
``max_epochs`` and ``time_budget_min``; ``run.json`` records which (``stop_reason``).

``accelerate`` places the model, runs mixed precision and, under ``accelerate launch``, DDP:
every process takes its share of each global batch (so steps, schedule and data order do
not depend on the number of processes) and its share of the valid instances (the
per-instance metrics of all processes are gathered back in order before the means are taken,
so validation gives what one process computes). Models that compare the instances of a batch
with each other (GenSR's InfoNCE) gather them across processes themselves. On one process it
is a plain loop.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedDataParallelKwargs
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

import gensr
from gensr.data.batching import (
    TASK_INDEX,
    Batch,
    InstanceTable,
    TrainSampler,
    eval_instances,
    tasks_present,
)
from gensr.data.dataset import SRData
from gensr.errors import ConfigError, DataError, RunError
from gensr.eval.protocol import Shard, evaluate_table
from gensr.metrics import KS, metric_names
from gensr.models.base import ModelOutput, SRModel
from gensr.outputs import MARKER, make_dir, write_marker
from gensr.progress import progress as progress_bar
from gensr.runs import RunInfo, pick_device, resolve_precision
from gensr.threads import ThreadGuard, parse_threads
from gensr.train import checkpoint
from gensr.train.checkpoint import TrainState
from gensr.train.config import TrainConfig, metric_value, parse_metric


class LossForward(nn.Module):
    """Makes ``model.loss`` the ``forward`` of the module ``accelerate`` prepares, so that DDP
    (which synchronises gradients from inside its forward) sees every training call."""

    def __init__(self, model: SRModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> ModelOutput:
        return self.model.loss(batch)


def make_accelerator(config: TrainConfig) -> Accelerator:
    """An ``Accelerator`` for ``config.device`` and ``config.precision``."""
    device = pick_device(config.device)
    mixed = "bf16" if resolve_precision(config.precision, device) == "bf16" else "no"
    cpu = device.type == "cpu"
    if AcceleratorState._shared_state and PartialState().num_processes == 1:
        # accelerate keeps one global state per process; a second run in the same Python
        # process (tests, notebooks) with other settings has to clear it first
        state = AcceleratorState()
        if state.mixed_precision != mixed or (state.device.type == "cpu") != cpu:
            AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(
        cpu=cpu,
        mixed_precision=mixed,
        step_scheduler_with_optimizer=False,  # we step it once per optimizer step ourselves
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def make_optimizer(groups: list[dict[str, Any]], lr: float) -> torch.optim.AdamW:
    """AdamW over ``groups``, torch's fused implementation where this torch has it for the
    parameters' device (CPU from torch 2.4, CUDA): one kernel per step instead of about ten
    small ops per parameter; the same update up to rounding. Falls back to the per-parameter
    implementation elsewhere."""
    params = [p for g in groups for p in g["params"]]
    fusable = params and all(p.is_floating_point() and p.device.type in ("cpu", "cuda")
                             for p in params)
    if fusable:
        try:
            return torch.optim.AdamW(groups, lr=lr, fused=True)
        except (RuntimeError, ValueError, TypeError):  # torch < 2.4 on CPU: no fused kernel
            pass
    return torch.optim.AdamW(groups, lr=lr)


def warmup_linear(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR multiplier: 0 → 1 over ``warmup_steps``, then 1 → 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def cf_user_pool(model: SRModel, data: SRData, config: TrainConfig) -> np.ndarray | None:
    """``train.hard_source: cf``: each user's top items by the CF table's user · item score
    (``train.hard_cf_path``, else the model's ``cf_path``), ``hard_pool`` plus the most
    training items a user has, best first; None for the other sources."""
    if config.hard_source != "cf" or not config.hard_negatives:
        return None
    from gensr.cf.table import CFTable

    path = config.hard_cf_path or getattr(model.config, "cf_path", "")
    if not path:
        raise ConfigError("train.hard_source cf needs a CF table: train.hard_cf_path, or a "
                          "model with cf_path (gensr pretrain-cf)")
    table = CFTable.load(path, data)
    if table.user is None:
        raise ConfigError(f"{path} holds no user table: train.hard_source cf needs one")
    counts = np.bincount(data.train()["user_id"].to_numpy(), minlength=len(table.user))
    width = min(data.n_items, config.hard_pool + int(counts.max(initial=0)))
    out = np.zeros((len(table.user), width), dtype=np.int64)
    items = table.item.float()
    for start in range(0, len(table.user), 4096):
        scores = table.user[start : start + 4096].float() @ items.T
        scores[:, 0] = float("-inf")
        out[start : start + 4096] = torch.topk(scores, width, dim=1).indices.numpy()
    return out


def valid_subset(data: SRData, tasks: tuple[str, ...], config: TrainConfig) -> InstanceTable:
    """The seeded subset of valid instances used for mid-training validation.

    The subset is drawn from all valid instances (both tasks: ``eval_fraction`` of them, at
    most ``eval_max_instances``, seed ``eval_seed`` or else the run's), then restricted to
    ``tasks``: models with the same settings validate on the same instances of each task,
    whichever tasks they serve."""
    table = eval_instances(data, "valid")
    served = np.isin(table.task, [TASK_INDEX[t] for t in tasks])
    if not served.any():  # the split has none of them: fit says so, naming the tasks
        return table.subset(np.nonzero(served)[0])
    n = max(1, round(config.eval_fraction * len(table)))
    if config.eval_max_instances is not None:
        n = min(n, config.eval_max_instances)
    if n < len(table):
        rng = np.random.default_rng(config.seed if config.eval_seed is None else config.eval_seed)
        table = table.subset(np.sort(rng.choice(len(table), size=n, replace=False)))
    keep = np.isin(table.task, [TASK_INDEX[t] for t in tasks])
    if not keep.any():
        raise ConfigError(f"the validation subset ({len(table)} valid instances) holds none of "
                          f"the tasks {list(tasks)}: raise train.eval_max_instances or "
                          "eval_fraction")
    return table.subset(np.nonzero(keep)[0])


def _shard(batch: Batch, rank: int, world: int) -> Batch:
    """This process's rows of a global batch (rows repeat when it has fewer than ``world``)."""
    if world == 1:
        return batch
    n = len(batch)
    rows = torch.arange(rank, rank + world * math.ceil(n / world), world) % n
    return batch.select(rows)


def fit(
    model: SRModel,
    data: SRData,
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    stop_after_steps: int | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainState:
    """Train ``model`` on ``data``'s training split; the best model ends in ``run_dir``.

    ``resume`` continues from ``run_dir/last/``. ``stop_after_steps`` stops (and checkpoints)
    after that many optimizer steps, as Ctrl-C would: a hook for testing exact resumption.
    Returns the final :class:`TrainState`; ``run_dir/run.json`` records the run. torch's CPU
    thread count (``train.threads``) is as it was before when fit returns.
    """
    threads = torch.get_num_threads()
    try:
        return _fit(model, data, config, run_dir, resume=resume,
                    stop_after_steps=stop_after_steps, log=log)
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _fit(model: SRModel, data: SRData, config: TrainConfig, run_dir: str | Path, *,
         resume: bool, stop_after_steps: int | None,
         log: Callable[[str], None] | None) -> TrainState:
    """:func:`fit`'s body."""
    run_dir = Path(run_dir)
    if not model.trainable:
        raise ConfigError(f"{model.name} is not trainable")
    if not resume and (run_dir / checkpoint.LAST).exists():
        raise RunError(f"{run_dir} already holds a run: use --resume or a new directory")
    metric_task, _ = parse_metric(config.metric)
    if metric_task != "mean" and metric_task not in model.tasks:
        raise ConfigError(f"train.metric {config.metric!r}: {model.name} serves only "
                          f"{list(model.tasks)}")
    log = log or tqdm.write
    started = time.time()
    accelerator = make_accelerator(config)
    threads = parse_threads(config.threads)
    if isinstance(threads, int):
        torch.set_num_threads(threads)
    guard = None  # train.threads = auto: fewer threads while other processes hold cores
    if threads == "auto" and accelerator.device.type == "cpu" and torch.get_num_threads() > 1:
        guard = ThreadGuard(prime_s=0.2, log=log)
    rank, world, main = accelerator.process_index, accelerator.num_processes, \
        accelerator.is_main_process
    if not main:
        log = _silent  # one process reports

    # data: the training interactions of the tasks the model serves, in a per-epoch order
    sampler = TrainSampler(data, config.n_negatives, seed=config.seed,
                           hard_negatives=config.hard_negatives, hard_pool=config.hard_pool,
                           hard_source=config.hard_source,
                           user_pool=cf_user_pool(model, data, config))
    keep = np.isin(sampler.task, [TASK_INDEX[t] for t in model.tasks])
    n_train = int(keep.sum())
    if n_train == 0:
        raise DataError(f"{data.path}: no training interactions for {list(model.tasks)}: "
                        f"nothing to train {model.name} on")
    untrained = [t for t in model.tasks if not (sampler.task == TASK_INDEX[t]).any()]
    if untrained:
        log(f"warning: the training split has no {' or '.join(untrained)} interactions: "
            f"{model.name} trains on {', '.join(t for t in model.tasks if t not in untrained)} "
            "only")
    steps_per_epoch = math.ceil(n_train / config.batch_size)
    total_steps = steps_per_epoch * config.max_epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    eval_every = config.eval_every or max(1, steps_per_epoch // 2)
    valid = valid_subset(data, model.tasks, config)
    validated = tasks_present(valid)
    if not validated:
        raise DataError(f"{data.path}: the valid split has no {' or '.join(model.tasks)} "
                        f"instances: nothing to validate {model.name} on")
    unvalidated = [t for t in model.tasks if t not in validated]
    if unvalidated:
        if metric_task in unvalidated:
            raise ConfigError(f"train.metric {config.metric!r}: the valid split has no "
                              f"{metric_task} instances (use mean/… or another task)")
        log(f"warning: the valid split has no {' or '.join(unvalidated)} instances: "
            f"validating on {', '.join(validated)} only")
    shard = Shard(rank, world, accelerator.gather) if world > 1 else None

    # optimizer and schedule
    groups = [g for g in model.param_groups(config.weight_decay) if g["params"]]
    if not groups:
        raise ConfigError(f"{model.name} has no trainable parameters")
    optimizer = make_optimizer(groups, config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_linear(config.warmup_steps, total_steps))
    net, optimizer, scheduler = accelerator.prepare(LossForward(model), optimizer, scheduler)
    model = accelerator.unwrap_model(net).model

    state = TrainState()
    if resume:
        state = checkpoint.load(run_dir, model, optimizer, scheduler, rank)
        log(f"resumed {run_dir} at step {state.step} (epoch {state.epoch}, "
            f"batch {state.batch})")
    elif main:
        make_dir(run_dir, RunError)
    if main and not (run_dir / MARKER).exists():
        write_marker(run_dir, "run")  # gensr wrote it: a later fresh start may clear it
    writer = SummaryWriter(str(run_dir / "tb"), purge_step=state.step if resume else None) \
        if main else None
    info = {
        "train_instances": n_train, "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps, "eval_every": eval_every, "valid_instances": len(valid),
        "n_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "precision": accelerator.mixed_precision, "num_processes": world,
        "device": str(accelerator.device), "device_name": _device_name(accelerator.device),
        # this session's clock (Unix seconds): when fit began, when its first and last
        # optimizer steps ended, how many it ran (benchmarks/scale.py reads them)
        "timing": {"fit_started": started, "first_step_done": None, "last_step_done": None,
                   "steps": 0},
        # torch's CPU threads: the setting, the count at the start, and each change the
        # guard made (train.threads = auto) as [step, threads]
        "threads": {"setting": config.threads, "start": torch.get_num_threads(),
                    "changes": []},
    }
    if main and not resume:  # the settings, before any step (a kill -9 keeps them)
        _write_run_info(run_dir, model, data, config, state, "started", info)

    def save_checkpoint(rng: dict[str, Any]) -> None:
        staged = checkpoint.staging_dir(run_dir)
        if main:
            shutil.rmtree(staged, ignore_errors=True)
            staged.mkdir(parents=True)
        accelerator.wait_for_everyone()
        checkpoint.write_rng(staged, rank, rng)
        if main:
            checkpoint.write_main(staged, model, optimizer, scheduler, state)
        accelerator.wait_for_everyone()
        if main:
            checkpoint.commit(run_dir)

    def write_run_info(status: str) -> None:
        if main:
            state.wall_time = wall_before + time.time() - started
            _write_run_info(run_dir, model, data, config, state, status, info)

    def validate() -> None:
        with accelerator.autocast():
            metrics = evaluate_table(model, data, valid, batch_size=config.eval_batch_size,
                                     progress=False, desc="valid", shard=shard)
        value = metric_value(metrics, config.metric)
        improved = state.best_metric is None or value > state.best_metric
        if improved:
            state.best_metric, state.best_step, state.bad_evals = value, state.step, 0
            if main:
                model.save_pretrained(run_dir)
        else:
            state.bad_evals += 1
        train_loss = float(torch.stack(interval).mean()) if interval else None
        interval.clear()
        state.history.append({"step": state.step, "epoch": round(state.step / steps_per_epoch, 3),
                              "minutes": round((wall_before + time.time() - started) / 60, 3),
                              "train_loss": train_loss, "value": value, "metrics": metrics})
        if writer is not None:
            writer.add_scalar(f"valid/{config.metric}", value, state.step)
            for task, row in metrics.items():
                for name in metric_names(KS):
                    writer.add_scalar(f"valid/{task}/{name}", row[name], state.step)
        log(f"step {state.step} (epoch {state.step / steps_per_epoch:.2f}): {config.metric} "
            f"{value:.4f}{' *' if improved else ''}  best {state.best_metric:.4f} "
            f"@ step {state.best_step}")

    def out_of_patience() -> bool:
        return config.patience > 0 and state.bad_evals >= config.patience

    def out_of_time() -> bool:
        return (config.time_budget_min is not None
                and wall_before + time.time() - started >= 60 * config.time_budget_min)

    wall_before = state.wall_time
    bar = progress_bar(total=total_steps, initial=state.step, desc=f"train {model.name}",
                       enabled=config.progress and main, dynamic_ncols=True)
    losses: list[torch.Tensor] = []  # since the last log
    interval: list[torch.Tensor] = []  # since the last validation
    parts: dict[str, list[float]] = {}
    rng = checkpoint.capture_rng()  # random states as of the last completed step
    status = "running"
    net.train()
    try:
        while (state.step < total_steps and state.epoch < config.max_epochs
               and not out_of_patience() and not (state.step and out_of_time())
               and status == "running"):  # a budget stops after a step (never before one)
            table, order = sampler.epoch(state.epoch)
            order = order[keep[order]]
            for batch in table.batches(data, config.batch_size, model.history_window,
                                       order=order, start=state.batch):
                batch = _shard(batch, rank, world).to(accelerator.device)
                with accelerator.autocast():
                    out = net(batch)
                accelerator.backward(out.loss)
                if config.grad_clip > 0:
                    accelerator.clip_grad_norm_(net.parameters(), config.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                if guard is not None and guard.poll() is not None:  # other processes came/went
                    info["threads"]["changes"].append([state.step, torch.get_num_threads()])
                timing = info["timing"]
                timing["last_step_done"] = time.time()
                timing["first_step_done"] = timing["first_step_done"] or timing["last_step_done"]
                timing["steps"] += 1
                state.batch += 1
                rng = checkpoint.capture_rng()

                loss_value = out.loss.detach().float()
                if world > 1:  # the mean over processes: the loss of the global batch
                    loss_value = accelerator.reduce(loss_value, reduction="mean")
                losses.append(loss_value)
                interval.append(losses[-1])
                for key, value in out.logs.items():
                    parts.setdefault(key, []).append(float(value))
                if state.step % config.log_every == 0 or state.step == total_steps:
                    loss = float(torch.stack(losses).mean())
                    bar.set_postfix(loss=f"{loss:.4f}")
                    if writer is not None:
                        writer.add_scalar("train/loss", loss, state.step)
                        writer.add_scalar("train/lr", scheduler.get_last_lr()[0], state.step)
                        for key, values in parts.items():
                            writer.add_scalar(f"train/{key}", float(np.mean(values)),
                                              state.step)
                    losses.clear()
                    parts.clear()
                bar.update(1)

                if state.step % eval_every == 0 or state.step == total_steps:
                    validate()
                    save_checkpoint(rng)
                    write_run_info("running")
                if state.step >= total_steps or out_of_patience() or out_of_time():
                    break
                if stop_after_steps is not None and state.step >= stop_after_steps:
                    status = "paused"
                    break
            else:  # the epoch ran out of batches
                state.epoch += 1
                state.batch = 0
    except KeyboardInterrupt:
        save_checkpoint(rng)
        info["stop_reason"] = "interrupted"
        write_run_info("interrupted")
        bar.close()
        log(f"interrupted at step {state.step}: checkpoint in {run_dir / checkpoint.LAST}, "
            "continue with --resume")
        raise
    bar.close()
    if status == "paused":
        save_checkpoint(rng)
    elif state.best_step is None or state.history[-1]["step"] != state.step:
        validate()  # a resumed run that had nothing left to do, or a partial last epoch
        save_checkpoint(rng)
    if status != "paused":
        status = "early_stopped" if out_of_patience() else "finished"
    if status == "paused":
        info["stop_reason"] = "paused"
    elif out_of_patience():
        info["stop_reason"] = "early_stop"
    elif state.step < total_steps and state.epoch < config.max_epochs and out_of_time():
        info["stop_reason"] = "time_budget"
    elif config.max_steps is not None and total_steps == config.max_steps:
        info["stop_reason"] = "max_steps"
    else:
        info["stop_reason"] = "max_epochs"
    write_run_info(status)
    if writer is not None:
        writer.close()
    accelerator.wait_for_everyone()
    return state


def _silent(_: str) -> None:
    pass


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def _write_run_info(run_dir: Path, model: SRModel, data: SRData, config: TrainConfig,
                    state: TrainState, status: str, info: dict[str, Any]) -> None:
    best = next((h for h in state.history if h["step"] == state.best_step), None)
    RunInfo(
        model=model.name, data_dir=str(Path(data.path).resolve()), data_name=data.name,
        data_fingerprint=data.fingerprint, trained=True, status=status,
        model_config=dataclasses.asdict(model.config), train_config=dataclasses.asdict(config),
        best_step=state.best_step,
        best_metric={"name": config.metric, "value": state.best_metric},
        best_valid=best["metrics"] if best else None, steps=state.step,
        epochs=round(state.step / info["steps_per_epoch"], 3),
        wall_time_s=round(state.wall_time, 2), **info,
        torch=torch.__version__, gensr=gensr.__version__, history=state.history,
    ).write(run_dir)
