"""The resumable checkpoint ``RUN_DIR/last/``: everything a killed run needs to go on exactly.

``last/checkpoint.pt`` holds the model, optimizer and scheduler states and the trainer's
:class:`TrainState` (step, epoch, batches done in that epoch, best-so-far, patience counter,
history); ``last/rng_{rank}.pt`` holds each process's Python, NumPy and torch (CPU and CUDA)
random states, so dropout draws the same masks after a resume; ``last/state.json`` is a
readable copy of the trainer state. The folder is written beside and renamed into place, so a
run killed while saving keeps its previous checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
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
    """This process's random states (Python, NumPy, torch CPU and CUDA)."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng(states: dict[str, Any]) -> None:
    """Set the random states saved by :func:`capture_rng`."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def staging_dir(run_dir: Path) -> Path:
    """The folder a new checkpoint is written into before it replaces ``last/``."""
    return run_dir / f"{LAST}.tmp"


def write_main(directory: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any,
               state: TrainState) -> None:
    """The main process's part: weights, optimizer, scheduler, trainer state."""
    torch.save({
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "state": dataclasses.asdict(state),
    }, directory / "checkpoint.pt")
    readable = {k: v for k, v in dataclasses.asdict(state).items() if k != "history"}
    (directory / "state.json").write_text(json.dumps(readable, indent=2))


def write_rng(directory: Path, rank: int, rng: dict[str, Any]) -> None:
    """Every process's part: its random states."""
    torch.save(rng, directory / f"rng_{rank}.pt")


def commit(run_dir: Path) -> None:
    """Replace ``last/`` by the staged checkpoint (the old one is removed only after)."""
    last, staged, old = run_dir / LAST, staging_dir(run_dir), run_dir / f"{LAST}.old"
    shutil.rmtree(old, ignore_errors=True)
    if last.exists():
        last.rename(old)
    staged.rename(last)
    shutil.rmtree(old, ignore_errors=True)


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
    # our own files: they hold NumPy/Python random states, which weights_only refuses
    saved = torch.load(last / "checkpoint.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    rng_file = last / f"rng_{rank}.pt"
    if not rng_file.exists():
        raise RunError(f"{rng_file} missing: the run was saved with fewer processes")
    restore_rng(torch.load(rng_file, map_location="cpu", weights_only=False))
    return TrainState(**saved["state"])
