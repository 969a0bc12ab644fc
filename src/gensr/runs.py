"""Run directories: what ``gensr train`` writes and ``evaluate``/``serve``/``compare`` read.

``RUN_DIR/run.json`` is a :class:`RunInfo`: the model name, the data directory and its
fingerprint, the configs and the training state, written by the trainer (and for untrained
models by ``train_run``) and read back typed by everyone else; ``model.json`` +
``model.safetensors`` hold the best model. :data:`FINISHED` says which states count as a
finished run, everywhere.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gensr.data.dataset import SRData, load_data
from gensr.errors import RunError
from gensr.files import read_json
from gensr.models.base import SRModel, read_model_card
from gensr.models.registry import model_class
from gensr.outputs import describe_holder, lock_holder
from gensr.tensor import PRECISIONS, pick_device, resolve_precision

__all__ = ["FINISHED", "PRECISIONS", "RUN_FILE", "STOP_REASONS", "RunInfo", "load_run",
           "pick_device", "prepare_inference", "read_run_info",
           "resolve_precision", "unfinished_warning"]
# (the device and precision helpers live in gensr.tensor)

RUN_FILE = "run.json"
#: the states of a run that is done: trained to its end (or early-stopped), or not trainable
FINISHED = ("finished", "early_stopped", "not trainable")
#: why training ended (``RunInfo.stop_reason``) -> how tables say it
STOP_REASONS = {"early_stop": "early stop", "max_steps": "max steps",
                "max_epochs": "max epochs", "time_budget": "time budget",
                "interrupted": "interrupted", "paused": "paused", "error": "failed"}
#: what an unfinished status means, in the warning that evaluating such a run prints
UNFINISHED = {"started": "its training stopped before its first checkpoint",
              "running": "its training stopped without finishing (killed, or crashed)",
              "failed": "its training failed",
              "interrupted": "its training was interrupted",
              "paused": "its training was paused"}


#: the keys that name a run: what it trains, on which data, with which settings
REQUIRED: dict[str, type] = {"model": str, "data_dir": str, "data_fingerprint": str,
                             "model_config": dict, "train_config": dict}


@dataclass
class RunInfo:
    """``RUN_DIR/run.json``: what a run is and where it stands.

    ``status``: started (settings written, no step yet) | running | interrupted | paused |
    failed (an error ended it: ``extra["error"]``) | finished | early_stopped | not
    trainable. The trainer's bookkeeping (``train_instances``,
    ``steps_per_epoch``, ``timing``, ``threads``, …) is kept as written; keys this version
    does not know are kept in ``extra`` and written back."""

    model: str = ""
    data_dir: str = ""
    data_fingerprint: str = ""
    model_config: dict[str, Any] = field(default_factory=dict)
    train_config: dict[str, Any] = field(default_factory=dict)
    data_name: str = ""
    trained: bool = True
    status: str = "started"
    best_step: int | None = None
    best_metric: dict[str, Any] | None = None
    best_valid: dict[str, Any] | None = None
    steps: int = 0
    epochs: float | None = None
    wall_time_s: float = 0.0
    train_instances: int | None = None
    steps_per_epoch: int | None = None
    total_steps: int | None = None
    eval_every: int | None = None
    valid_instances: int | None = None
    n_params: int | None = None
    precision: str | None = None
    num_processes: int | None = None
    device: str | None = None
    device_name: str | None = None
    timing: dict[str, Any] | None = None
    threads: dict[str, Any] | None = None
    stop_reason: str | None = None
    torch: str = ""
    gensr: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    # --- reading and writing ---------------------------------------------------------------
    @classmethod
    def from_dict(cls, doc: dict[str, Any], path: Path | str = RUN_FILE) -> RunInfo:
        """From a parsed ``run.json`` (a one-line :class:`RunError` when a key that names
        the run is of the wrong type; :meth:`check` also requires them)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        for key, kind in REQUIRED.items():
            if key in doc and not isinstance(doc[key], kind):
                raise RunError(f"{path}: '{key}' is not a {kind.__name__}: not a run.json "
                               "gensr wrote")
        known = {k: v for k, v in doc.items() if k in names}
        return cls(**known, extra={k: v for k, v in doc.items() if k not in names})

    def check(self, path: Path | str) -> RunInfo:
        """Itself, when it holds what resuming or reusing the run needs (the model, its data
        and both configs); else a one-line :class:`RunError` naming the first gap."""
        for key, kind in REQUIRED.items():
            value = getattr(self, key)
            if not value:
                raise RunError(f"{path}: '{key}' is missing or not a {kind.__name__}: not a "
                               "run.json gensr wrote")
        return self

    @classmethod
    def read(cls, run_dir: str | Path) -> RunInfo | None:
        """The run's record, or None when the folder has no ``run.json`` (a bare
        ``save_pretrained`` folder, or nothing yet)."""
        path = Path(run_dir) / RUN_FILE
        if not path.exists():
            return None
        return cls.from_dict(read_json_object(path), path)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to ``run.json`` (unset bookkeeping left out)."""
        doc = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "extra"}
        optional = ("best_metric", "best_valid", "epochs", "train_instances",
                    "steps_per_epoch", "total_steps", "eval_every", "valid_instances",
                    "n_params", "precision", "num_processes", "device", "device_name",
                    "timing", "threads", "stop_reason")
        doc = {k: v for k, v in doc.items() if not (k in optional and v is None)}
        history = doc.pop("history")
        return {**doc, **self.extra, "history": history}

    def write(self, run_dir: str | Path) -> None:
        """Write ``run.json`` atomically (a temporary file renamed over it)."""
        path = Path(run_dir) / RUN_FILE
        tmp = path.with_name(f"{RUN_FILE}.tmp")
        try:
            tmp.write_text(json.dumps(self.to_dict(), indent=2))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk: the previous run.json stays whole
            raise

    # --- what the state means --------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """Trained to its end (or early-stopped), or a model that needs no training."""
        return self.status in FINISHED

    @property
    def why_stopped(self) -> str | None:
        """Why a trained run stopped (a key of :data:`STOP_REASONS`): the recorded
        ``stop_reason``, or for runs written before it was recorded, inferred from the status
        and the step counts. None for runs that are not trained or still running."""
        if not self.trained or self.status in ("running", "started"):
            return None
        if self.stop_reason:
            return str(self.stop_reason)
        if self.status in ("early_stopped", "interrupted", "paused"):
            return {"early_stopped": "early_stop"}.get(self.status, self.status)
        max_steps = self.train_config.get("max_steps")
        return "max_steps" if max_steps is not None and self.steps == max_steps \
            and self.total_steps == max_steps else "max_epochs"


def unfinished_warning(run_dir: str | Path) -> str | None:
    """None when ``run_dir``'s ``run.json`` says the run finished (or there is none: a bare
    ``save_pretrained`` folder); else the one-line warning that evaluating or serving it
    prints: its state and step, whether a live process is training it now (its writer lock,
    :func:`gensr.outputs.lock_holder`), and which weights are scored."""
    run_dir = Path(run_dir)
    if not (run_dir / RUN_FILE).exists():
        return None
    doc = read_json_object(run_dir / RUN_FILE)
    info = RunInfo.from_dict(doc, run_dir / RUN_FILE)
    if info.finished or "status" not in doc:  # no state recorded (not the trainer's record)
        return None
    step = f"step {info.steps}" + (f" of {info.total_steps}" if info.total_steps else "")
    holder = lock_holder(run_dir)
    if holder is not None:
        why = f"it is being trained now by {describe_holder(holder)}"
    else:
        why = UNFINISHED.get(info.status, f"status {info.status}")
        if info.status == "failed" and info.extra.get("error"):
            why += f": {info.extra['error']}"
    weights = (f"the weights of step {info.best_step}, its best validation so far"
               if info.best_step is not None else "weights no validation chose")
    resume = (f"; `gensr train --out {run_dir} --resume` continues it" if holder is None
              and (run_dir / "last" / "checkpoint.pt").is_file() else "")
    return (f"warning: {run_dir} did not finish training (status {info.status} at {step}: "
            f"{why}); these are {weights}{resume}")


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    """``run.json`` of a run directory as a plain dict (an empty dict for a bare
    ``save_pretrained`` folder); typed: :meth:`RunInfo.read`."""
    info = RunInfo.read(run_dir)
    return info.to_dict() if info is not None else {}


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file holding one object, with a one-line :class:`RunError` when it does not
    (a damaged file says so: :func:`gensr.files.read_json`)."""
    return read_json(path, RunError)


def load_run(
    run_dir: str | Path,
    data: SRData | str | Path | None = None,
    device: str | torch.device | None = None,
) -> tuple[SRModel, SRData]:
    """The best model of a run and its data (from ``run.json`` unless ``data`` is given)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run directory {run_dir} does not exist")
    card = read_model_card(run_dir)
    if data is None:
        info = RunInfo.read(run_dir)
        if info is None or not info.data_dir:
            raise RunError(f"{run_dir}/run.json names no data directory: pass --data")
        data = info.data_dir
    if not isinstance(data, SRData):
        data = load_data(data)
    model = model_class(card["model"]).from_pretrained(run_dir, data)
    dev = device if isinstance(device, torch.device) else pick_device(device)
    return model.to(dev).eval(), data


def prepare_inference(model: SRModel, precision: str = "auto", fast_path: bool = True) -> str:
    """Set a loaded model up for scoring; returns the precision it now scores in.

    GenSR: its backbone weights in ``precision`` (``auto`` = bf16 on a CUDA device that
    supports it, else fp32) and, with ``fast_path``, its automatic speed levers (the fused T5
    pass and length buckets everywhere, larger chunks on CUDA) — without,
    the original path everywhere (docs/speed.md). Other models are small and score in fp32.
    """
    from gensr.models.gensr.speed import Speed

    set_precision = getattr(model, "set_precision", None)
    if set_precision is None:
        resolve_precision(precision, model.device)  # the value is still checked
        return "fp32"
    model.speed = Speed() if fast_path else Speed.plain()  # type: ignore[assignment]
    return set_precision(precision)
