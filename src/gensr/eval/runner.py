"""``gensr evaluate``: load a run (or build a reference scorer), evaluate, print and save."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from gensr.data import load_data
from gensr.data.candidates import check_strategy
from gensr.errors import ConfigError, DataError
from gensr.eval.protocol import Shard, evaluate, evaluate_full
from gensr.eval.tables import print_table
from gensr.models.registry import model_class
from gensr.runs import load_run, pick_device, prepare_inference


def evaluate_run(
    *,
    run_dir: Path | None,
    model: str | None,
    data: Path | None,
    split: str = "test",
    full: bool = False,
    ties: str = "expected",
    batch_size: int = 64,
    max_instances: int | None = None,
    save_scores: Path | None = None,
    device: str | None = None,
    console: Console | None = None,
    precision: str = "auto",
    fast_path: bool = True,
    candidates: str = "uniform",
) -> dict:
    """Evaluate and print; a run's metrics go to ``RUN_DIR/metrics_{split}.json``
    (``metrics_{split}.{candidates}.json`` for a candidate strategy other than uniform).

    ``precision``/``fast_path``: how GenSR scores (:func:`gensr.runs.prepare_inference`;
    auto = bf16 and the fast path on CUDA, fp32 and the original path on CPU)."""
    console = console or Console()
    check_strategy(candidates)
    if full and candidates != "uniform":
        raise ConfigError("--candidates has no effect with --full (it ranks every item)")
    shard = None if full else Shard.current()  # several processes: `accelerate launch`
    if shard is not None and device is None:
        from accelerate import PartialState

        device = str(PartialState().device)  # each process on its own GPU
    if (run_dir is None) == (model is None):
        raise ConfigError("give either RUN_DIR or --model NAME (with --data)")
    if run_dir is not None:
        net, dataset = load_run(run_dir, data, device)
    else:
        if data is None:
            raise ConfigError("--model needs --data DATA_DIR")
        dataset = load_data(data)
        cls = model_class(model)  # type: ignore[arg-type]
        if cls.trainable:
            raise ConfigError(f"{model} needs training: run `gensr train --model {model}` first")
        net = cls(cls.config_class(), dataset).to(pick_device(device))
    used = prepare_inference(net, precision, fast_path)
    present = set(dataset.candidates(split, candidates)["task"].unique().to_list())
    served = [t for t in net.tasks if t in present]
    if not served:
        raise DataError(f"the {split} split of {dataset.path} has no "
                        f"{' or '.join(net.tasks)} instances: nothing to evaluate {net.name} on")
    missing = [t for t in net.tasks if t not in present]
    if missing:
        console.print(f"warning: the {split} split has no {' or '.join(missing)} instances: "
                      f"evaluating {', '.join(served)} only", highlight=False)
    if full:
        metrics = evaluate_full(net, dataset, split, batch_size=batch_size)
    else:
        metrics = evaluate(net, dataset, split, batch_size=batch_size, ties=ties,  # type: ignore[arg-type]
                           max_instances=max_instances, scores_out=save_scores,
                           candidates=candidates, shard=shard)
    if shard is not None and shard.index != 0:
        return metrics  # process 0 prints and writes
    name = f"{net.name}{' (full)' if full else ''}"
    strategy = "" if full or candidates == "uniform" else f".{candidates}"
    print_table({name: metrics}, metrics=("R@1", "R@5", "N@5", "R@10", "N@10", "R@20", "N@20"),
                title=f"{dataset.name} {split}"
                      + ("" if full else f", {candidates} candidates")
                      + (f" ({used}{'' if fast_path else ', original path'})"
                         if net.name == "gensr" else ""), console=console)
    if run_dir is not None:
        out = Path(run_dir) / f"metrics_{split}{'_full' if full else ''}{strategy}.json"
        out.write_text(json.dumps(metrics, indent=2))
        console.print(f"wrote {out}")
    return metrics
