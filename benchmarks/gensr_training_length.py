"""Does GenSR close its gap with more training? One GenSR run trained for the issue's full
60-minute budget against the 800-step runs of the fair comparison (issue 15).

    python benchmarks/gensr_training_length.py --run runs/long/gensr/seed0 \\
        --against sasrec=runs/fair/sasrec/seed0 --against tem=runs/fair/tem/seed0 \\
        --against gensr-paper=runs/fair/gensr-paper/seed0

Reads what ``gensr compare`` left in each run directory (``run.json``: the validation curve,
steps, stop reason; ``compare_eval[.STRATEGY].json``: the test metrics per instance for each
candidate strategy it was evaluated on) and the committed 800-step tables
(``benchmarks/results/compare_scientific_{uniform,bm25hard}.json``: the same GenSR
configuration's seed-0 run and the 3-seed means). Writes
``benchmarks/results/gensr_training_length.{md,json}``: the long run's validation curve and,
per candidate strategy and task, test N@10 / R@10 of the long run, of the 800-step run of the
same seed, and of each ``--against`` run, with a paired t-test of the long run against each
run here (the 800-step run's per-instance values are not committed, so it gets none).
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

import numpy as np

from gensr.eval.significance import paired_test

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TABLES = {"uniform": "compare_scientific_uniform", "bm25-hard": "compare_scientific_bm25hard"}
TASKS = {"rec": "Recommendation", "src": "Search"}
METRICS = ("N@10", "R@10")


def _value(x):
    """run.json stores some fields as Python reprs; read them back."""
    if isinstance(x, str):
        try:
            return ast.literal_eval(x)
        except (ValueError, SyntaxError):
            return x
    return x


def read_run(run: Path) -> dict:
    info = {k: _value(v) for k, v in json.loads((run / "run.json").read_text()).items()}
    evals = {}
    for strategy in TABLES:
        path = run / ("compare_eval.json" if strategy == "uniform"
                      else f"compare_eval.{strategy}.json")
        if path.exists():
            evals[strategy] = json.loads(path.read_text())
    return {"info": info, "evals": evals}


def per_task_values(stored: dict, task_of_row: dict[int, str]) -> dict[str, dict]:
    """{task: {"rows": [...], metric: np.array}} from a compare_eval file."""
    per = stored["per_instance"]
    out: dict[str, dict] = {}
    for j, row in enumerate(per["rows"]):
        task = task_of_row[int(row)]
        slot = out.setdefault(task, {"rows": [], **{m: [] for m in METRICS}})
        slot["rows"].append(int(row))
        for m in METRICS:
            slot[m].append(per[m][j])
    return {t: {"rows": np.array(v["rows"]), **{m: np.array(v[m]) for m in METRICS}}
            for t, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="the long GenSR run directory")
    ap.add_argument("--against", action="append", default=[], metavar="NAME=RUN_DIR")
    ap.add_argument("--label", default="gensr", help="the long run's column in the tables")
    ap.add_argument("--out", type=Path, default=RESULTS / "gensr_training_length")
    ap.add_argument("--note", default="")
    args = ap.parse_args()

    from gensr.data import load_data
    from gensr.data.batching import TASK_INDEX, eval_instances

    long = read_run(args.run)
    info = long["info"]
    data = load_data(info["data_dir"])
    others = {}
    for spec in args.against:
        name, _, path = spec.partition("=")
        others[name] = read_run(Path(path))

    curve = [{"step": h["step"], "epoch": h["epoch"], "value": h["value"],
              **{f"{t}/N@10": h["metrics"][t]["N@10"] for t in h["metrics"]}}
             for h in info["history"]]
    timing = info.get("timing") or {}
    report = {
        "run": str(args.run), "label": args.label, "data": info["data_name"],
        "fingerprint": info["data_fingerprint"], "steps": info["steps"],
        "epochs": info["epochs"], "best_step": info["best_step"],
        "stop_reason": info["stop_reason"], "wall_time_s": info["wall_time_s"],
        "train_config": info["train_config"], "device_name": info.get("device_name"),
        "timing": timing, "curve": curve, "strategies": {}, "note": args.note,
    }
    for strategy, stem in TABLES.items():
        if strategy not in long["evals"]:
            continue
        stored = long["evals"][strategy]
        settings = stored["signature"]["settings"]
        table = eval_instances(data, settings["split"], max_instances=settings["max_instances"],
                               seed=settings["seed"], candidates=strategy)
        name_of = {v: k for k, v in TASK_INDEX.items()}
        task_of_row = {i: name_of[int(t)] for i, t in enumerate(table.task)}
        mine = per_task_values(stored, task_of_row)
        committed = json.loads((RESULTS / f"{stem}.json").read_text())
        short_runs = committed["models"][args.label]["runs"]
        short = next(r for r in short_runs if r["seed"] == 0)
        rows = {args.label: {"steps": info["steps"], "metrics": stored["metrics"]}}
        rows[f"{args.label} 800 steps (seed 0)"] = {"steps": short["steps"],
                                                     "metrics": short["metrics"]}
        rows[f"{args.label} 800 steps (3 seeds)"] = {
            "steps": short["steps"], "metrics": committed["models"][args.label]["mean"]}
        tests: dict[str, dict] = {}
        for name, other in others.items():
            if strategy not in other["evals"]:
                continue
            ostored = other["evals"][strategy]
            if ostored["signature"]["candidates"] != stored["signature"]["candidates"]:
                raise SystemExit(f"{name}: evaluated on other {strategy} candidates")
            rows[name] = {"steps": other["info"]["steps"], "metrics": ostored["metrics"]}
            theirs = per_task_values(ostored, task_of_row)
            for task, vals in theirs.items():
                pos = {r: j for j, r in enumerate(mine[task]["rows"])}
                idx = np.array([pos[r] for r in vals["rows"]])
                for m in METRICS:
                    res = paired_test(mine[task][m][idx], vals[m])
                    tests.setdefault(name, {}).setdefault(task, {})[m] = {
                        "n": len(idx), "diff": res.diff, "p_value": res.p_value}
        report["strategies"][strategy] = {"rows": rows, "tests": tests,
                                          "candidates": stored["signature"]["candidates"]}

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    text = markdown(report)
    args.out.with_suffix(".md").write_text(text)
    print(text)


def markdown(r: dict) -> str:
    tc = r["train_config"]
    lines = [
        f"# GenSR with the full training budget ({r['data']})", "",
        f"`{r['run']}`: {r['steps']} steps ({r['epochs']} epochs) in "
        f"{float(r['wall_time_s']) / 60:.1f} min, stopped by `{r['stop_reason']}`, best "
        f"validation at step {r['best_step']}; lr {tc['lr']} with {tc['warmup_steps']} warm-up "
        f"steps and linear decay over {tc.get('max_steps')} steps or {tc['max_epochs']} epochs "
        f"(time budget {tc['time_budget_min']} min), validation every {tc['eval_every']} steps "
        f"on {tc['eval_max_instances']} instances; {r['device_name']}.", "",
        "## Validation curve", "",
        "| step | epoch | mean N@10 | rec N@10 | search N@10 |", "|---:|---:|---:|---:|---:|"]
    for h in r["curve"]:
        star = " *" if h["step"] == int(r["best_step"]) else ""
        lines.append(f"| {h['step']} | {h['epoch']:.2f} | {h['value']:.4f}{star} | "
                     f"{h.get('rec/N@10', float('nan')):.4f} | "
                     f"{h.get('src/N@10', float('nan')):.4f} |")
    for strategy, block in r["strategies"].items():
        lines += ["", f"## Test, {strategy} candidates", "",
                  "p: paired t-test of the long run against that run over their shared test "
                  "instances (two-sided; the 800-step rows come from the committed tables, "
                  "without per-instance values).", "",
                  "| model | steps | " + " | ".join(
                      f"{TASKS[t]} {m}" for t in TASKS for m in METRICS) + " |",
                  "|---|---:|" + "---:|" * (len(TASKS) * len(METRICS))]
        for name, row in block["rows"].items():
            cells = []
            for t in TASKS:
                for m in METRICS:
                    v = row["metrics"].get(t, {}).get(m)
                    test = block["tests"].get(name, {}).get(t, {}).get(m)
                    cell = "–" if v is None else f"{v:.4f}"
                    if test is not None:
                        cell += f" (p {test['p_value']:.2g})"
                    cells.append(cell)
            lines.append(f"| {name} | {row['steps']} | " + " | ".join(cells) + " |")
    if r.get("note"):
        lines += ["", r["note"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
