"""The resumable checkpoint ``RUN_DIR/last/``: everything a killed run needs to go on exactly.

``last/checkpoint.pt`` holds the model, optimizer and scheduler states and the trainer's
:class:`TrainState` (step, epoch, batches done in that epoch, best-so-far, patience counter,
history); ``last/rng_{rank}.pt`` holds each process's Python, NumPy and torch (CPU and CUDA)
random states, so dropout draws the same masks after a resume; ``last/state.json`` is a
readable copy of the trainer state. The folder is written beside and renamed into place, so a
run killed while saving keeps its previous checkpoint.

Both files hold only tensors and plain values (numbers, strings, lists, dicts): the random
states are converted to tensors on save and back on load, so they are read with
``torch.load(weights_only=True)``, which refuses to unpickle anything else. A planted
``checkpoint.pt`` cannot run code: it is a one-line :class:`~gensr.errors.RunError`.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import random
import shutil
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gensr.errors import RunError

LAST = "last"


@dataclass
class TrainState:
    """Where training stands; everything in it is saved in the checkpoint."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch being trained (0-based)
    batch: int = 0  # batches of ``epoch`` done (the next batch to run)
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals: int = 0  # validations since the last improvement
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_time: float = 0.0  # seconds spent training, over all resumes


def capture_rng() -> dict[str, Any]:
    """This process's random states (Python, NumPy, torch CPU and CUDA), as tensors and plain
    values only (what ``torch.load(weights_only=True)`` reads back)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": int(version),
                   "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng(states: dict[str, Any]) -> None:
    """Set the random states saved by :func:`capture_rng`."""
    py, nps = states["python"], states["numpy"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()),
                     py["gauss_next"]))
    np.random.set_state((nps["kind"], nps["keys"].numpy().astype(np.uint32), nps["pos"],
                         nps["has_gauss"], nps["cached_gaussian"]))
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def staging_dir(run_dir: Path) -> Path:
    """The folder a new checkpoint is written into before it replaces ``last/``."""
    return run_dir / f"{LAST}.tmp"


def write_main(directory: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any,
               state: TrainState) -> None:
    """The main process's part: weights, optimizer, scheduler, trainer state."""
    _save({
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "state": dataclasses.asdict(state),
    }, directory / "checkpoint.pt")
    readable = {k: v for k, v in dataclasses.asdict(state).items() if k != "history"}
    (directory / "state.json").write_text(json.dumps(readable, indent=2))


def write_rng(directory: Path, rank: int, rng: dict[str, Any]) -> None:
    """Every process's part: its random states."""
    _save(rng, directory / f"rng_{rank}.pt")


def _save(obj: Any, path: Path) -> None:
    """``torch.save`` through a Python file: an OS error (a full disk) stays an ``OSError``
    that the error it causes is raised from (torch's own writer reports it as
    ``unexpected pos …``)."""
    with open(path, "wb") as fh:
        torch.save(obj, fh)


def discard_staged(run_dir: Path) -> None:
    """Remove a checkpoint that was being written when the run failed (``last.tmp/``)."""
    shutil.rmtree(staging_dir(run_dir), ignore_errors=True)


def commit(run_dir: Path) -> None:
    """Replace ``last/`` by the staged checkpoint (the old one is removed only after)."""
    last, staged, old = run_dir / LAST, staging_dir(run_dir), run_dir / f"{LAST}.old"
    shutil.rmtree(old, ignore_errors=True)
    if last.exists():
        last.rename(old)
    staged.rename(last)
    shutil.rmtree(old, ignore_errors=True)


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a checkpoint to resume (``last/``, or ``last.old/`` of a run
    killed while it replaced ``last/``)."""
    return any((run_dir / name / "checkpoint.pt").exists() for name in (LAST, f"{LAST}.old"))


def _first_sentence(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text.split(". ")[0][:160]


def safe_load(path: Path) -> Any:
    """``torch.load`` of a checkpoint file that unpickles tensors and plain values only; a
    file that holds anything else, or is not a checkpoint at all, is a one-line error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4" of a plant
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():
            raise RunError(f"{path} is not a checkpoint this gensr wrote: it holds more than "
                           "tensors and plain values, and gensr refuses to unpickle anything "
                           "else") from None
        raise RunError(f"{path} is not a readable checkpoint ({_first_sentence(err)})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError,
            AttributeError, TypeError, IndexError) as err:
        raise RunError(f"{path} is not a readable checkpoint (damaged or truncated: "
                       f"{_first_sentence(err)})") from None


def _part(saved: Any, key: str, path: Path) -> Any:
    if not isinstance(saved, dict) or key not in saved:
        raise RunError(f"{path} is not a gensr checkpoint (no '{key}' entry)")
    return saved[key]


def load(run_dir: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any,
         rank: int) -> TrainState:
    """Restore model, optimizer, scheduler and this process's random states from ``last/``."""
    last = run_dir / LAST
    if not (last / "checkpoint.pt").exists():
        if (run_dir / f"{LAST}.old" / "checkpoint.pt").exists():  # killed inside commit()
            last = run_dir / f"{LAST}.old"
        else:
            raise RunError(f"{run_dir} has no checkpoint to resume ({last}/checkpoint.pt "
                           "missing): start a new run without --resume")
    path = last / "checkpoint.pt"
    saved = safe_load(path)
    parts = {key: _part(saved, key, path) for key in ("model", "optimizer", "scheduler", "state")}
    try:
        model.load_state_dict(parts["model"])
        optimizer.load_state_dict(parts["optimizer"])
        scheduler.load_state_dict(parts["scheduler"])
        state = TrainState(**parts["state"])
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as err:
        raise RunError(f"{path} does not fit this run's model ({_first_sentence(err)})"
                       ) from None
    rng_file = last / f"rng_{rank}.pt"
    if not rng_file.exists():
        raise RunError(f"{rng_file} missing: the run was saved with fewer processes")
    rng = safe_load(rng_file)
    try:
        restore_rng(rng)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError, IndexError):
        raise RunError(f"{rng_file} holds no random states gensr can restore (written by an "
                       "older gensr, or damaged): start the run again") from None
    return state
