"""The long-history lever ablation of GenSR (the long-history issue), on ``data/longsyn``.

    python benchmarks/long_history.py                 # trains what is missing
    python benchmarks/long_history.py --stored-only   # only the finished runs on disk

Every row is a ``gensr compare`` column of ``configs/verdict_cpu.yaml`` on the long-history
synthetic data (1,500 users with 60-140 events each), trained (or reused) in
``runs/verdict_longsyn``: the paper's GenSR, gensr's earlier recommendation (v1), the
recommended GenSR (v1 + the user's LightGCN vector), and one lever changed at a time
(listwise loss, CF-mined instead of category negatives, uniform negatives), beside SASRec,
UniSAR, disc and TEM under the same training setting. The final rows (gensr, gensr-paper and
the baselines) run 3 seeds, the ablation rows one. For each row: test R@10 / N@10 per task on
the uniform and on the held-out dense-hard candidates, the training minutes and steps, and
for each lever its change against the row it changes (seed-aware two-level bootstrap when
both rows have several seeds, else the paired test over instances).

Writes ``benchmarks/results/long_history.{md,json}``.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CONFIG = ROOT / "configs" / "verdict_cpu.yaml"
DATASET = "longsyn"
ROWS = {  # column -> (what it is, the row it changes one lever of)
    "gensr-paper": ("the paper's GenSR (no model lever)", None),
    "gensr-v1": ("gensr's earlier recommendation: + candidate text, item vector, behaviour "
                 "marker, query match", "gensr-paper"),
    "gensr": ("v1 + the user's LightGCN vector in the prompt (recommended for long "
              "histories: docs/levers.md)", "gensr-v1"),
    "gensr-list": ("gensr + listwise loss (weight 1)", "gensr"),
    "gensr-cf": ("gensr, hard negatives from the user's top LightGCN items", "gensr"),
    "gensr-uni": ("gensr, uniform negatives only", "gensr"),
    "sasrec": ("SASRec", None),
    "sasrec-uni": ("SASRec, uniform negatives only", "sasrec"),
    "unisar": ("UniSAR", None),
    "disc": ("disc (GenSR's discriminative twin)", None),
    "tem": ("TEM", None),
    "tem-uni": ("TEM, uniform negatives only", "tem"),
}
PROTOCOLS = ("uniform", "dense-hard")
SHOWN = ("R@10", "N@10")


def run(protocol: str, stored_only: bool) -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from verdict import run_compare

    return run_compare(DATASET, protocol, tuple(ROWS), progress=False, stored_only=stored_only)


def per_seed_values(report: dict, name: str, task: str, metric: str) -> np.ndarray:
    """(runs, instances) per-instance values of a column (its compare evaluation caches)."""
    from gensr.reuse import stored_eval

    rows = []
    strategy = report["eval"]["candidates"]
    for r in report["models"][name]["runs"]:
        found = stored_eval(Path(r["run_dir"]), strategy)
        assert found is not None, r["run_dir"]
        ev = found[0]
        rows.append((ev.rows, ev.values[metric]))
    task_code = {"rec": 0, "src": 1}[task]
    import polars as pl

    inst = pl.read_parquet(Path(report["out"]) / f"compare_instances"
                           f"{'' if strategy == 'uniform' else '.' + strategy}.parquet")
    tasks = np.where(inst["task"].to_numpy() == "rec", 0, 1)
    out = []
    for row_ids, values in rows:
        out.append(values[tasks[row_ids] == task_code])
    return np.stack(out)


def change(report: dict, name: str, base: str, task: str, metric: str = "N@10") -> dict:
    from gensr.eval.significance import paired_test, seed_bootstrap

    a = per_seed_values(report, name, task, metric)
    b = per_seed_values(report, base, task, metric)
    if len(a) > 1 and len(b) > 1:
        r = seed_bootstrap(a, b, n_boot=5000).to_dict()
        return {"diff": r["diff"], "p": r["p_value"], "test": "two-level bootstrap",
                "ci": [r["ci_low"], r["ci_high"]]}
    r = paired_test(a.mean(0), b.mean(0))
    return {"diff": r.diff, "p": r.p_value, "test": "paired t-test (one seed)"}


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stored-only", action="store_true",
                    help="train nothing: each row's seeds are its finished runs on disk")
    args = ap.parse_args(argv)
    result: dict = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "config": str(CONFIG.relative_to(ROOT)), "data": DATASET, "protocols": {}}
    for protocol in PROTOCOLS:
        report = run(protocol, args.stored_only)
        rows = {}
        for name, (about, base) in ROWS.items():
            entry = report["models"].get(name)
            if entry is None:
                continue
            while base is not None and base not in report["models"]:
                base = ROWS[base][1]  # a row not run: compare with the row it changes
            runs = entry["runs"]
            row = {"about": about, "base": base, "seeds": len(runs),
                   "train_min": [round(r["train_time_s"] / 60, 1) for r in runs],
                   "steps": [r["steps"] for r in runs],
                   "stop": sorted({str(r["stop_reason"]) for r in runs}),
                   "mean": entry["mean"], "std": entry["std"], "change": {}}
            if base is not None:
                for task in entry["mean"]:
                    if task in report["models"][base]["mean"]:
                        row["change"][task] = change(report, name, base, task)
            rows[name] = row
        result["protocols"][protocol] = {"instances": report["eval"]["instances"],
                                         "rows": rows}
        result["not_run"] = [n for n in ROWS if n not in rows]
    (RESULTS / "long_history.json").write_text(json.dumps(result, indent=1))
    (RESULTS / "long_history.md").write_text(markdown(result))
    print(f"wrote {RESULTS / 'long_history.md'}")
    return 0


def _cell(row: dict, task: str, metric: str) -> str:
    if task not in row["mean"]:
        return "–"
    mean, std = row["mean"][task][metric], row["std"][task][metric]
    return f"{mean:.4f} ± {std:.4f}" if row["seeds"] > 1 else f"{mean:.4f}"


def _change(row: dict, task: str) -> str:
    c = row["change"].get(task)
    if not c:
        return ""
    ci = f" [{c['ci'][0]:+.4f}, {c['ci'][1]:+.4f}]" if "ci" in c else ""
    mark = "†" if c["p"] < 0.05 else ""
    return f"{c['diff']:+.4f}{mark}{ci} (p {c['p']:.3g})"


def markdown(result: dict) -> str:
    lines = ["# GenSR on long histories: the lever ablation", "",
             f"Generated {result['created']} by `python benchmarks/long_history.py` "
             f"(`{result['config']}`, data `{result['data']}`: synthetic, 1,500 users with "
             "60-140 events each, every model reading the last 10 interactions). Every "
             "trained model: 1 of 3 negatives from the positive's category unless the row "
             "says otherwise; early stopping on the same 1,000 valid instances. Δ = the "
             "change against the row named in *vs* (N@10; † p < 0.05: two-level bootstrap "
             "over seeds and instances when both rows have several seeds, else the paired "
             "t-test over instances).", ""]
    if result.get("not_run"):
        lines += ["Rows of the config with no finished run (not measured; `--stored-only` "
                  "leaves them out): " + ", ".join(f"`{n}`" for n in result["not_run"]) + ".",
                  ""]
    for protocol, per in result["protocols"].items():
        n = per["instances"]
        lines += [f"## {protocol} candidates ({n['rec']:,} rec + {n['src']:,} search test "
                  "instances)", "",
                  "| row | what | seeds | rec R@10 | rec N@10 | search R@10 | search N@10 | vs "
                  "| Δ rec N@10 | Δ search N@10 | train min | steps | stop |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, row in per["rows"].items():
            lines.append(
                f"| {name} | {row['about']} | {row['seeds']} | {_cell(row, 'rec', 'R@10')} | "
                f"{_cell(row, 'rec', 'N@10')} | {_cell(row, 'src', 'R@10')} | "
                f"{_cell(row, 'src', 'N@10')} | {row['base'] or ''} | {_change(row, 'rec')} | "
                f"{_change(row, 'src')} | {', '.join(map(str, row['train_min']))} | "
                f"{', '.join(map(str, row['steps']))} | {', '.join(row['stop'])} |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
