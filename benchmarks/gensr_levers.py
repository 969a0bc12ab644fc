"""The ablation of gensr's GenSR levers (issue 15): the paper's GenSR, the paper's GenSR plus
one lever each, and gensr's recommended model (all four model levers: ``gensr-800``, the
recommended model with the ablation's 800 steps and without the recommendation's hard
training negatives), trained with the same budget,
window, validation subset and seed, evaluated on the same test instances.

    python benchmarks/gensr_levers.py --data data/scientific --out runs/fair \\
        --cf data/scientific_cf/cf.safetensors [--config configs/compare_fair_cpu.yaml]

Runs (or reuses) ``gensr compare`` for the variants of the config (seed 0 unless --seeds),
then writes ``benchmarks/results/gensr_levers.{md,json}`` (``gensr_levers.STRATEGY.*`` with
``--candidates`` other than uniform): per variant and task R@10 / N@10,
the change from the paper's GenSR with a paired t-test over the shared test instances, the
best validation step, the steps trained and the training time. The levers are documented in
docs/levers.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import polars as pl

from gensr.compare import compare, strategy_suffix
from gensr.eval.significance import paired_test

ROOT = Path(__file__).resolve().parents[1]
ROWS = {  # column in the compare config -> what it is
    "gensr-paper": "the paper's GenSR (no lever)",
    "gensr-paper-text": "+ candidate text in the prompt (candidate_text_len 20, category+text)",
    "gensr-paper-item": "+ trainable item embedding (item_embedding)",
    "gensr-paper-marker": "+ behaviour marker (behaviour_marker)",
    "gensr-nomatch": "text + item embedding + behaviour marker (no query_match)",
    "gensr-800": "gensr's recommended model (all four levers: the three + query_match), "
                 "no hard negatives",
}
# (variant, its base): the change one lever makes on top of the others, paired-tested
PAIRS = (("gensr-800", "gensr-nomatch"),)
TASKS = {"rec": "Recommendation", "src": "Search"}
METRICS = ("R@10", "N@10")


def _values(part: pl.DataFrame, name: str, metric: str) -> np.ndarray:
    """``name``'s per-instance ``metric`` over the instances of ``part``."""
    return part[f"{name}/{metric}"].to_numpy().astype(np.float64)


def paired_change(part: pl.DataFrame, name: str, base: str, metric: str) -> dict:
    """``{metric} delta`` (mean of ``name`` minus mean of ``base``, rounded to 4 places) and
    ``{metric} p`` (two-sided paired t-test) over the instances of ``part``."""
    mine, ref = _values(part, name, metric), _values(part, base, metric)
    return {f"{metric} delta": round(float(np.mean(mine) - np.mean(ref)), 4),
            f"{metric} p": float(paired_test(mine, ref, "t-test").p_value)}


def lever_table(report: dict, instances: pl.DataFrame, names: list[str],
                reference: str = "gensr-paper") -> dict:
    """Rows of the ablation: metrics, change from ``reference`` and its paired t-test p."""
    rows = {}
    for name in names:
        about = ROWS[name]
        model = report["models"][name]
        run = model["runs"][0]
        info = json.loads((Path(run["run_dir"]) / "run.json").read_text())
        row = {"about": about, "seeds": model["seeds"], "steps": run["steps"],
               "best_step": run["best_step"], "stop_reason": run["stop_reason"],
               "train_time_s": run["train_time_s"],
               "steps_per_s": round(run["steps"] / max(run["train_time_s"], 1e-9), 3),
               "valid_curve": [{"step": h["step"], "value": round(h["value"], 4)}
                               for h in info.get("history", [])],
               "tasks": {}}
        for task in TASKS:
            part = instances.filter(pl.col("task") == task)
            cell = {}
            for metric in METRICS:
                cell[metric] = round(float(np.mean(_values(part, name, metric))), 4)
                if name != reference:
                    cell.update(paired_change(part, name, reference, metric))
            row["tasks"][task] = cell
        rows[name] = row
    return rows


def pair_table(instances: pl.DataFrame, names: list[str]) -> list[dict]:
    """For each (variant, base) of :data:`PAIRS` that ran: the change in N@10 per task and
    its paired t-test."""
    out = []
    for variant, base in PAIRS:
        if variant not in names or base not in names:
            continue
        row = {"variant": variant, "base": base, "tasks": {}}
        for task in TASKS:
            part = instances.filter(pl.col("task") == task)
            row["tasks"][task] = {
                "base N@10": round(float(np.mean(_values(part, base, "N@10"))), 4),
                "N@10": round(float(np.mean(_values(part, variant, "N@10"))), 4),
                **paired_change(part, variant, base, "N@10")}
        out.append(row)
    return out


def markdown(result: dict) -> str:
    """The ablation as one Markdown table, with how it was made."""
    lines = ["# GenSR levers: ablation on amazon-scientific", "",
             f"Test split, {result['instances']['rec']:,} rec + {result['instances']['src']:,} "
             f"search instances, {result['candidates']} candidates; seed(s) "
             f"{result['seeds']}; the same budget, window, validation subset and seed for "
             "every row (configs/compare_fair_cpu.yaml). Δ: change from the paper's GenSR; "
             "p: paired t-test over the same test instances (two-sided).", "",
             "| variant | rec R@10 | rec N@10 | Δ rec N@10 (p) | search R@10 | search N@10 "
             "| Δ search N@10 (p) | steps (best) | train time | steps/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in result["rows"].items():
        cells = [f"`{name}`: {row['about']}"]
        for task in TASKS:
            t = row["tasks"][task]
            cells += [f"{t['R@10']:.4f}", f"{t['N@10']:.4f}"]
            cells.append(f"{t['N@10 delta']:+.4f} ({t['N@10 p']:.2g})" if "N@10 p" in t
                         else "–")
        cells += [f"{row['steps']} ({row['best_step']})", f"{row['train_time_s'] / 60:.1f} min",
                  f"{row['steps_per_s']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Validation curve (mean N@10 of both tasks on the shared 1,000 valid "
              "instances, by step):", ""]
    for name, row in result["rows"].items():
        curve = ", ".join(f"{p['step']}: {p['value']:.4f}" for p in row["valid_curve"])
        lines.append(f"- `{name}` ({row['stop_reason']}): {curve}")
    if result.get("pairs"):
        lines += ["", "One lever on top of the others (paired t-test over the same test "
                  "instances):", "", "| variant vs base | rec N@10 | Δ (p) | search N@10 | Δ (p) |",
                  "|---|---:|---:|---:|---:|"]
        for pair in result["pairs"]:
            cells = [f"`{pair['variant']}` vs `{pair['base']}`"]
            for task in TASKS:
                t = pair["tasks"][task]
                cells += [f"{t['base N@10']:.4f} → {t['N@10']:.4f}",
                          f"{t['N@10 delta']:+.4f} ({t['N@10 p']:.2g})"]
            lines.append("| " + " | ".join(cells) + " |")
    if result.get("not_run"):
        lines += ["", "Not run (no CPU time left in the session that made this table): "
                  + ", ".join(f"`{n}` ({ROWS[n]})" for n in result["not_run"]) + "."]
    lines += ["", f"Training: {result['threads']}. Made by `python benchmarks/gensr_levers.py` "
              f"on {result['created']}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data/scientific")
    parser.add_argument("--out", default="runs/fair")
    parser.add_argument("--cf", default=None)
    parser.add_argument("--config", default=str(ROOT / "configs" / "compare_fair_cpu.yaml"))
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    parser.add_argument("--variants", default=",".join(ROWS),
                        help="comma-separated rows (default: all; gensr-paper is the reference)")
    parser.add_argument("--candidates", default="uniform")
    parser.add_argument("--threads", default="one torch thread a run, two runs side by side "
                        "on the 2 cores", help="how the runs were trained (for the table)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = sorted(set(names) - set(ROWS))
    if unknown or "gensr-paper" not in names:
        parser.error(f"--variants: rows are {', '.join(ROWS)} (gensr-paper always; unknown: "
                     f"{unknown})")
    report = compare(args.data, names, args.out, config_path=args.config,
                     cf_path=args.cf, seeds=seeds, candidates=args.candidates, progress=False)
    instances = pl.read_parquet(Path(args.out) /
                                f"compare_instances{strategy_suffix(args.candidates)}.parquet")
    result = {"data": report["data"], "candidates": args.candidates, "seeds": seeds,
              "instances": report["eval"]["instances"], "config": args.config,
              "threads": args.threads, "created": report["created"],
              "rows": lever_table(report, instances, names),
              "pairs": pair_table(instances, names),
              "not_run": [n for n in ROWS if n not in names]}
    out = Path(args.results)
    stem = f"gensr_levers{strategy_suffix(args.candidates)}"  # uniform: no suffix
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
