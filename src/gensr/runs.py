"""Run directories: what ``gensr train`` writes and ``evaluate``/``serve``/``compare`` read.

``RUN_DIR/run.json`` records the model name, the data directory and its fingerprint, the
configs and the training state; ``model.json`` + ``model.safetensors`` hold the best model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from gensr.data.dataset import SRData, load_data
from gensr.errors import RunError
from gensr.models.base import SRModel, read_model_card
from gensr.models.registry import model_class
from gensr.tensor import PRECISIONS, pick_device, resolve_precision

__all__ = ["PRECISIONS", "load_run", "pick_device", "prepare_inference", "read_run_info",
           "resolve_precision"]  # the device and precision helpers live in gensr.tensor


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    """``run.json`` of a run directory (an empty dict for a bare ``save_pretrained`` folder)."""
    path = Path(run_dir) / "run.json"
    return json.loads(path.read_text()) if path.exists() else {}


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
        info = read_run_info(run_dir)
        if "data_dir" not in info:
            raise RunError(f"{run_dir}/run.json names no data directory: pass --data")
        data = info["data_dir"]
    if not isinstance(data, SRData):
        data = load_data(data)
    model = model_class(card["model"]).from_pretrained(run_dir, data)
    dev = device if isinstance(device, torch.device) else pick_device(device)
    return model.to(dev).eval(), data


def prepare_inference(model: SRModel, precision: str = "auto", fast_path: bool = True) -> str:
    """Set a loaded model up for scoring; returns the precision it now scores in.

    GenSR: its backbone weights in ``precision`` (``auto`` = bf16 on a CUDA device that
    supports it, else fp32) and, with ``fast_path``, its automatic speed levers (the fused T5
    pass, length buckets and larger chunks on CUDA; the original path on CPU) — without,
    the original path everywhere (docs/speed.md). Other models are small and score in fp32.
    """
    from gensr.models.gensr.speed import Speed

    set_precision = getattr(model, "set_precision", None)
    if set_precision is None:
        resolve_precision(precision, model.device)  # the value is still checked
        return "fp32"
    model.speed = Speed() if fast_path else Speed.plain()  # type: ignore[assignment]
    return set_precision(precision)
