"""``gensr train``: configs from YAML and ``--set``, the run directory, then :func:`fit`.

YAML layout::

    model: {...fields of the model's config class...}
    train: {...fields of TrainConfig...}

``--set`` takes ``model.key=v``, ``train.key=v`` or a bare ``key=v`` that names a field of
exactly one of the two configs. ``--set`` wins over the YAML file.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

import gensr
from gensr.config import load_yaml, parse_set, update_config
from gensr.data.dataset import SRData, load_data
from gensr.errors import ConfigError, GensrError, RunError
from gensr.files import first_line, open_safetensors
from gensr.models.base import ModelConfig, SRModel
from gensr.models.registry import model_class
from gensr.outputs import (
    MARKER,
    acquire_lock,
    check_not_input,
    check_output_path,
    is_no_space,
    marker_kind,
    no_space,
    release_lock,
    remove_owned,
    write_marker,
)
from gensr.runs import RUN_FILE, RunInfo
from gensr.train.checkpoint import LAST, discard_staged, has_checkpoint
from gensr.train.config import TrainConfig
from gensr.train.loop import fit

SECTIONS = ("model", "train")


def _fields(config_class: type) -> list[str]:
    return [f.name for f in dataclasses.fields(config_class)]


def split_settings(model_config_class: type[ModelConfig], values: dict[str, Any]
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``--set`` pairs -> (model values, train values); bare keys go where they belong."""
    model_keys, train_keys = _fields(model_config_class), _fields(TrainConfig)
    model_values: dict[str, Any] = {}
    train_values: dict[str, Any] = {}
    for key, value in values.items():
        head, dot, rest = key.partition(".")
        if dot and head in SECTIONS:
            (model_values if head == "model" else train_values)[rest] = value
            continue
        in_model, in_train = head in model_keys, head in train_keys
        if in_model and in_train:
            raise ConfigError(f"setting '{key}' is both a model and a train setting: "
                              f"write model.{key} or train.{key}")
        if not (in_model or in_train):
            raise ConfigError(
                f"unknown setting '{key}'; model settings ({model_config_class.__name__}): "
                f"{', '.join(sorted(model_keys))}; train settings: {', '.join(sorted(train_keys))}"
            )
        (model_values if in_model else train_values)[key] = value
    return model_values, train_values


def build_configs(
    model_name: str,
    *,
    config_path: str | Path | None = None,
    sets: list[str] | None = None,
    cf_path: str | Path | None = None,
    device: str | None = None,
) -> tuple[ModelConfig, TrainConfig]:
    """The model config and :class:`TrainConfig` from defaults < YAML < ``--set`` (< ``--cf``,
    ``--device``)."""
    cls = model_class(model_name)
    model_values: dict[str, Any] = {}
    train_values: dict[str, Any] = {}
    if config_path is not None:
        doc = load_yaml(config_path)
        unknown = [k for k in doc if k not in SECTIONS]
        if unknown:
            raise ConfigError(f"{config_path}: unknown top-level key(s) {unknown}; "
                              "expected 'model:' and 'train:' sections")
        for section, target in (("model", model_values), ("train", train_values)):
            part = doc.get(section) or {}
            if not isinstance(part, dict):
                raise ConfigError(f"{config_path}: '{section}' must be a mapping")
            target.update(part)
    set_model, set_train = split_settings(cls.config_class, parse_set(sets))
    model_values.update(set_model)
    train_values.update(set_train)
    if cf_path is not None:
        if "cf_path" not in _fields(cls.config_class):
            raise ConfigError(f"--cf: model {model_name} takes no CF table (no cf_path setting)")
        if not Path(cf_path).exists():
            raise ConfigError(f"--cf: {cf_path} does not exist")
        model_values["cf_path"] = str(Path(cf_path).resolve())
    if device is not None:
        train_values["device"] = device
    model_config = update_config(cls.config_class(), model_values, prefix="model.")
    train_config = update_config(TrainConfig(), train_values, prefix="train.")
    return model_config, train_config


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch generators (model initialisation and dropout)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(model_name: str, model_config: ModelConfig, data: SRData, seed: int) -> SRModel:
    """The model, initialised from ``seed``."""
    seed_everything(seed)
    return model_class(model_name).build(model_config, data)


def _is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(p.name != MARKER for p in path.iterdir())


def never_checkpointed(run_dir: Path) -> bool:
    """Whether ``run_dir`` is a run directory gensr made whose run stopped (killed, or failed)
    before its first checkpoint: nothing in it is worth keeping, a new run may replace it."""
    if marker_kind(run_dir) != "run" or has_checkpoint(run_dir):
        return False
    try:
        info = RunInfo.read(run_dir)
    except RunError:
        return False
    return info is None or info.status == "started"


def _clear_unstarted(out: Path, inputs: dict[str, Any], log: Callable[[str], None]) -> None:
    log(f"{out} holds a run that stopped before its first checkpoint: starting it again")
    remove_owned(out, "run", RunError, inputs)


def train_run(
    out: str | Path,
    model_name: str | None = None,
    data_dir: str | Path | None = None,
    *,
    config_path: str | Path | None = None,
    sets: list[str] | None = None,
    cf_path: str | Path | None = None,
    resume: bool = False,
    device: str | None = None,
    log: Callable[[str], None] = print,
    stop_after_steps: int | None = None,
) -> RunInfo:
    """Train ``model_name`` on ``data_dir`` into run directory ``out``; returns its
    :class:`~gensr.runs.RunInfo`.

    Models with ``trainable = False`` (random, pop, bm25) are not trained: their run
    directory is written directly (``save_pretrained`` + ``run.json``), so ``gensr evaluate``
    treats them like any run. ``resume`` continues ``out`` from ``out/last/`` with the configs
    saved in its ``run.json``; ``sets`` may then change train settings only (e.g. max_epochs).
    """
    out = Path(out)
    check_output_path(out, RunError)
    with _one_writer(out, log):
        if resume:
            return _resume(out, model_name, data_dir, config_path, sets, cf_path, device, log,
                           stop_after_steps)
        return _new_run(out, model_name, data_dir, config_path, sets, cf_path, device, log,
                        stop_after_steps)


def _new_run(out: Path, model_name: str | None, data_dir: str | Path | None,
             config_path: str | Path | None, sets: list[str] | None,
             cf_path: str | Path | None, device: str | None, log: Callable[[str], None],
             stop_after_steps: int | None) -> RunInfo:
    if model_name is None or data_dir is None:
        raise ConfigError("gensr train needs --model and --data (or --resume on a run)")
    inputs = {"data directory": data_dir, "CF table": cf_path, "config file": config_path}
    check_not_input(out, {k: v for k, v in inputs.items() if k != "data directory"}, RunError)
    clear = False
    if _is_nonempty_dir(out):
        if not never_checkpointed(out):
            hint = " (it has a checkpoint: add --resume)" if has_checkpoint(out) else ""
            raise RunError(f"run directory {out} exists and is not empty{hint}; use --resume "
                           "to continue it or choose a new --out")
        clear = True
    model_config, train_config = build_configs(model_name, config_path=config_path, sets=sets,
                                               cf_path=cf_path, device=device)
    data = load_data(data_dir)
    if clear:
        _clear_unstarted(out, inputs, log)
    model = build_model(model_name, model_config, data, train_config.seed)
    if not model.trainable:
        return _write_untrained(out, model, data, train_config, log)
    fit(model, data, train_config, out, stop_after_steps=stop_after_steps, log=log)
    return _written(out)


# --- one writer, and what a failed run leaves ------------------------------------------------
def _main_process() -> bool:
    """Whether this is the process that writes the run (rank 0 under ``accelerate launch``)."""
    return os.environ.get("RANK", "0") in ("0", "")


@contextmanager
def _one_writer(out: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Hold ``out``'s writer lock (:func:`gensr.outputs.writer_lock`) while training; when
    the run fails, leave nothing half-written (:func:`after_failure`) and turn a full disk
    into one line."""
    main = _main_process()
    if main:
        acquire_lock(out, RunError, what="run directory", log=log)
    try:
        yield
    except BaseException as err:
        if main and not isinstance(err, GensrError):  # those are raised before any write
            after_failure(out, err)
        if isinstance(err, Exception) and not isinstance(err, GensrError) and is_no_space(err):
            after = ("the run keeps its last checkpoint: free some space and continue it with "
                     f"`gensr train --out {out} --resume`" if has_checkpoint(out) else
                     "no checkpoint was kept: free some space and train it again")
            raise no_space(out, RunError, err, after) from None
        raise
    finally:
        if main:
            release_lock(out)


def after_failure(out: Path, err: BaseException) -> None:
    """What a run that failed while writing must not leave behind: the checkpoint being
    staged (``last.tmp/``), a temporary ``run.json``, weights cut short (a
    ``model.safetensors`` that does not read back); a run that was training (``running``)
    is recorded as ``failed`` with the error, so nothing reads it as a result."""
    if not out.is_dir():
        return
    discard_staged(out)
    for tmp in out.glob(f"{RUN_FILE}.tmp"):
        tmp.unlink(missing_ok=True)
    weights = out / "model.safetensors"
    if weights.is_file():
        try:
            with open_safetensors(weights, RunError):
                pass
        except RunError:
            weights.unlink(missing_ok=True)
    if isinstance(err, KeyboardInterrupt):
        return  # the trainer recorded it (status interrupted, a checkpoint to resume)
    try:
        info = RunInfo.read(out)
    except RunError:
        return
    if info is None or info.status != "running":
        return
    info.status, info.stop_reason = "failed", "error"
    info.extra["error"] = ("no space left on device" if is_no_space(err) else
                           first_line(err, 300))
    try:
        info.write(out)
    except OSError:
        pass  # the disk is still full: run.json keeps saying running


def _resume(out: Path, model_name: str | None, data_dir: str | Path | None,
            config_path: str | Path | None, sets: list[str] | None,
            cf_path: str | Path | None, device: str | None, log: Callable[[str], None],
            stop_after_steps: int | None) -> RunInfo:
    info = RunInfo.read(out)
    started = info is not None and never_checkpointed(out)
    if info is None or not (has_checkpoint(out) or started):
        raise RunError(f"{out} has no checkpoint to resume ({RUN_FILE} or {LAST}/ missing)"
                       + ("; start it again without --resume" if never_checkpointed(out)
                          else ""))
    info.check(out / RUN_FILE)
    if model_name is not None and model_name != info.model:
        raise ConfigError(f"--resume: {out} trains {info.model}, not {model_name}")
    if config_path is not None or cf_path is not None:
        raise ConfigError("--resume takes the run's saved configs: drop --config/--cf "
                          "(use --set train.KEY=V to change a train setting)")
    cls = model_class(info.model)
    set_model, set_train = split_settings(cls.config_class, parse_set(sets))
    if set_model:
        raise ConfigError(f"--resume cannot change model settings ({', '.join(set_model)})")
    if device is not None:
        set_train["device"] = device
    model_config = update_config(cls.config_class(), info.model_config, prefix="model.")
    train_config = update_config(update_config(TrainConfig(), info.train_config),
                                 set_train, prefix="train.")
    data = load_data(data_dir if data_dir is not None else info.data_dir)
    if data.fingerprint != info.data_fingerprint:
        raise RunError(f"{out} was trained on data {info.data_fingerprint}, but {data.path} "
                       f"is {data.fingerprint}")
    if started:  # killed before its first checkpoint: the same run from step 0
        _clear_unstarted(out, {"data directory": data.path}, log)
    elif marker_kind(out) is None and not (out / MARKER).exists():
        write_marker(out, "run")  # a run of a gensr without markers
    model = build_model(info.model, model_config, data, train_config.seed)
    fit(model, data, train_config, out, resume=not started, stop_after_steps=stop_after_steps,
        log=log)
    return _written(out)


def _written(out: Path) -> RunInfo:
    info = RunInfo.read(out)
    if info is None:  # pragma: no cover - fit always writes it
        raise RunError(f"{out}: training wrote no {RUN_FILE}")
    return info


def _write_untrained(out: Path, model: SRModel, data: SRData, train_config: TrainConfig,
                     log: Callable[[str], None]) -> RunInfo:
    model.save_pretrained(out)
    write_marker(out, "run")
    run = RunInfo(model=model.name, data_dir=str(Path(data.path).resolve()),
                  data_name=data.name, data_fingerprint=data.fingerprint, trained=False,
                  status="not trainable", model_config=dataclasses.asdict(model.config),
                  train_config=dataclasses.asdict(train_config), steps=0, wall_time_s=0.0,
                  torch=torch.__version__, gensr=gensr.__version__)
    run.write(out)
    log(f"{model.name} needs no training: wrote its run directory {out} "
        f"(evaluate it with `gensr evaluate {out}`)")
    return run
