"""``gensr quickstart``: the main job on the embedded synthetic data, end to end."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console

from gensr.data import load_data
from gensr.data.dataset import SRData
from gensr.data.prepare import prepare
from gensr.eval.protocol import evaluate
from gensr.eval.tables import print_table, to_markdown
from gensr.models.registry import model_class
from gensr.runs import pick_device


def _data(out: Path, console: Console) -> SRData:
    data_dir = out / "data"
    if not (data_dir / "meta.json").exists():
        console.print("[bold]1. prepare[/bold] the embedded synthetic data")
        prepare("synthetic", None, data_dir, overwrite=True)
    data = load_data(data_dir)
    c = data.meta["counts"]
    console.print(f"synthetic data: {c['users']:,} users, {c['items']:,} items, "
                  f"{c['queries']:,} queries, rec {c['interactions']['rec']:,} / "
                  f"src {c['interactions']['src']:,} interactions ({data_dir})")
    return data


def run_quickstart(out: Path, device: str | None = None, console: Console | None = None) -> dict:
    """Prepare the synthetic data, evaluate the models, print and write the results table."""
    console = console or Console()
    start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    data = _data(out, console)
    dev = pick_device(device)
    results: dict[str, dict] = {}
    for name in ("random", "pop", "bm25"):
        cls = model_class(name)
        model = cls(cls.config_class(), data).to(dev)
        results[name] = evaluate(model, data, "test", progress=False)
    title = f"quickstart: synthetic test set ({time.time() - start:.0f}s)"
    print_table(results, title=title, console=console)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(to_markdown(results, title=title))
    console.print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return results
