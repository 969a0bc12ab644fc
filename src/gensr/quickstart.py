"""``gensr quickstart``: the main job on the embedded synthetic data, end to end.

prepare (synthetic) → pretrain the CF view (LightGCN) → train GenSR (a small, not pretrained
T5: ``configs/quickstart.yaml``) → evaluate on the test candidates → one table with GenSR
beside random, popularity and BM25, written to ``OUT/results.{json,md}``.

Finished steps are reused when the command is run again (``--fresh`` starts over); an
interrupted GenSR run resumes from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import time
from importlib import resources
from pathlib import Path

from rich.console import Console

from gensr.data import load_data
from gensr.data.dataset import SRData
from gensr.data.prepare import prepare
from gensr.errors import RunError
from gensr.eval.protocol import evaluate
from gensr.eval.tables import print_table, to_markdown
from gensr.models.registry import model_class
from gensr.outputs import (
    MARKER,
    check_output_path,
    is_empty_dir,
    is_owned,
    make_dir,
    remove_owned,
    write_marker,
)
from gensr.reuse import EvalSettings, ensure_cf_table, ensure_run, evaluate_run, evaluation_table
from gensr.runs import RunInfo, pick_device

REFERENCE_SCORERS = ("random", "pop", "bm25")


def quickstart_config() -> Path:
    """The packaged GenSR config of the quickstart."""
    return Path(str(resources.files("gensr") / "configs" / "quickstart.yaml"))


def _data(out: Path, console: Console, synthetic: dict | None = None) -> SRData:
    data_dir = out / "data"
    if not (data_dir / "meta.json").exists():
        console.print("[bold]1/4 prepare[/bold] the embedded synthetic data")
        prepare("synthetic", None, data_dir, overwrite=True, options=synthetic)
    data = load_data(data_dir)
    c = data.meta["counts"]
    console.print(f"synthetic data: {c['users']:,} users, {c['items']:,} items, "
                  f"{c['queries']:,} queries, rec {c['interactions']['rec']:,} / "
                  f"src {c['interactions']['src']:,} interactions ({data_dir})")
    return data


def _cf(out: Path, data: SRData, device: str | None, console: Console,
        options: dict | None = None) -> Path:
    path = out / "cf.safetensors"
    console.print("[bold]2/4 CF view[/bold]: LightGCN on the training rec interactions")
    _, card = ensure_cf_table(path, data, settings=options, device=device, log=console.print,
                              progress=True)
    if card is not None:
        valid = card["valid"]
        console.print(f"LightGCN valid R@20 (full ranking) {valid['lightgcn']['R@20']:.4f} "
                      f"vs popularity {valid['pop']['R@20']:.4f}")
    return path


def _train(out: Path, data: SRData, cf_path: Path, device: str | None, max_steps: int | None,
           console: Console) -> tuple[Path, RunInfo]:
    """GenSR's run in ``OUT/gensr`` (:func:`gensr.reuse.ensure_run`; quickstart owns the
    folder, so a run with other settings is trained again rather than refused)."""
    from gensr.train.run import build_configs

    run_dir = out / "gensr"
    sets = [f"train.max_steps={max_steps}"] if max_steps else []
    model_config, train_config = build_configs("gensr", config_path=quickstart_config(),
                                               sets=sets, cf_path=cf_path, device=device)
    console.print("[bold]3/4 train GenSR[/bold] (scratch T5, not pretrained; config "
                  f"{quickstart_config()})")
    action, info = ensure_run(run_dir, "gensr", dataclasses.asdict(model_config),
                              dataclasses.asdict(train_config), data, device=device,
                              log=console.print, replace=True,
                              config_file=out / "gensr.yaml")
    if action == "reused":
        console.print(f"reusing the finished run {run_dir}")
    return run_dir, info


def run_quickstart(
    out: Path,
    device: str | None = None,
    console: Console | None = None,
    *,
    fresh: bool = False,
    max_steps: int | None = None,
    synthetic: dict | None = None,
    cf_options: dict | None = None,
) -> dict:
    """Run the main job; returns ``{model: {task: metrics}}`` for the test split.

    ``synthetic`` and ``cf_options`` override the synthetic world's and LightGCN's settings
    (the tests use a smaller world)."""
    console = console or Console()
    start = time.time()
    check_output_path(out, RunError)
    # only a quickstart folder gensr wrote is reused, or deleted by --fresh
    if fresh:
        remove_owned(out, "quickstart", RunError)
    elif out.is_dir() and not is_empty_dir(out) and not is_owned(out, "quickstart"):
        raise RunError(f"--out {out} exists, is not empty and is not a quickstart folder gensr "
                       f"wrote (no {MARKER} marker, or files of yours in it): choose another "
                       "--out")
    make_dir(out, RunError)
    if not (out / MARKER).exists():
        write_marker(out, "quickstart")
    data = _data(out, console, synthetic)
    cf_path = _cf(out, data, device, console, cf_options)
    run_dir, info = _train(out, data, cf_path, device, max_steps, console)
    console.print("[bold]4/4 evaluate[/bold] on the test candidates (100 per instance)")
    dev = pick_device(device)
    results: dict[str, dict] = {}
    for name in REFERENCE_SCORERS:
        cls = model_class(name)
        model = cls(cls.config_class(), data).to(dev)
        results[name] = evaluate(model, data, "test", progress=False)
    settings = EvalSettings(split="test", batch_size=16)
    results["gensr"] = evaluate_run(run_dir, info, data, evaluation_table(data, settings),
                                    settings, device=str(dev), progress=True).metrics
    (run_dir / "metrics_test.json").write_text(json.dumps(results["gensr"], indent=2))
    elapsed = time.time() - start
    title = f"quickstart: synthetic test set ({elapsed:.0f}s on {dev.type})"
    print_table(results, title=title, console=console)
    (out / "results.json").write_text(json.dumps(
        {"results": results, "wall_time_s": round(elapsed, 1), "device": dev.type,
         "data_fingerprint": data.fingerprint, "gensr_run": str(run_dir)}, indent=2))
    (out / "results.md").write_text(
        to_markdown(results, title=title)
        + "\nGenSR here uses a small T5 built from a config and trained from scratch "
        "(not pretrained); the data are synthetic.\n")
    console.print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return results
