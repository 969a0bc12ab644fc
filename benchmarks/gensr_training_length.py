"""Does GenSR close its gap with more training? The recommended GenSR trained for the issue's
full 60-minute budget (``gensr-60min`` of configs/compare_fair_cpu.yaml) against the 800-step
runs of the fair comparison (issue 15).

    python benchmarks/gensr_training_length.py \
        --run runs/fair/gensr-60min/seed0 --run runs/fair/gensr-60min/seed1 ... \
        --against sasrec=runs/fair/sasrec/seed0 --against tem=runs/fair/tem/seed0 ...

Reads what ``gensr compare`` left in each run directory (``run.json``: the validation curve,
steps, stop reason; ``compare_eval[.STRATEGY].json``: the test metrics per instance for each
candidate strategy it was evaluated on) and the committed 800-step tables
(``benchmarks/results/compare_scientific_{uniform,bm25hard}.json``: the recommended GenSR's
3-seed means at 800 steps). Writes ``benchmarks/results/gensr_training_length.{md,json}``:
each long run's validation curve and, per candidate strategy and task, test N@10 / R@10 of
the long runs (mean ± std over the ``--run`` seeds), of the 800-step runs, and of each
``--against`` run, with a paired t-test over the shared test instances of the long runs'
per-instance metric (averaged over their seeds, as ``gensr compare`` does) against each
``--against`` run. The 800-step rows have no per-instance values committed, so no test.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from gensr.compare import EVAL_FILE, strategy_suffix
from gensr.eval.significance import paired_test
from gensr.runs import read_run_info

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TABLES = {"uniform": "compare_scientific_uniform", "bm25-hard": "compare_scientific_bm25hard"}
TASKS = {"rec": "Recommendation", "src": "Search"}
METRICS = ("N@10", "R@10")


def read_run(run: Path) -> dict:
    info = read_run_info(run)
    evals = {}
    for strategy in TABLES:
        path = run / f"{Path(EVAL_FILE).stem}{strategy_suffix(strategy)}.json"
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
    ap.add_argument("--run", type=Path, action="append", required=True,
                    help="a long GenSR run directory (repeat for each seed)")
    ap.add_argument("--against", action="append", default=[], metavar="NAME=RUN_DIR")
    ap.add_argument("--label", default="gensr-60min", help="the long runs' row")
    ap.add_argument("--short", default="gensr",
                    help="the committed tables' column of the same model at 800 steps")
    ap.add_argument("--out", type=Path, default=RESULTS / "gensr_training_length")
    ap.add_argument("--note", default="")
    args = ap.parse_args()

    from gensr.data import load_data
    from gensr.data.batching import TASK_INDEX, eval_instances

    longs = [read_run(r) for r in args.run]
    first = longs[0]["info"]
    if len({r["info"]["data_fingerprint"] for r in longs}) != 1:
        raise SystemExit("the --run directories were trained on different data")
    data = load_data(first["data_dir"])
    others = {}
    for spec in args.against:
        name, _, path = spec.partition("=")
        others[name] = read_run(Path(path))

    runs = []
    for path, run in zip(args.run, longs):
        info = run["info"]
        runs.append({
            "run": str(path), "seed": info["train_config"].get("seed"),
            "steps": info["steps"], "epochs": info["epochs"], "best_step": info["best_step"],
            "stop_reason": info["stop_reason"], "wall_time_s": float(info["wall_time_s"]),
            "device_name": info.get("device_name"),
            "curve": [{"step": h["step"], "epoch": h["epoch"], "value": h["value"],
                       **{f"{t}/N@10": h["metrics"][t]["N@10"] for t in h["metrics"]}}
                      for h in info["history"]]})
    report = {"label": args.label, "data": first["data_name"],
              "fingerprint": first["data_fingerprint"], "train_config": first["train_config"],
              "runs": runs, "strategies": {}, "note": args.note}
    name_of = {v: k for k, v in TASK_INDEX.items()}
    for strategy, stem in TABLES.items():
        if not all(strategy in r["evals"] for r in longs):
            continue
        stored = [r["evals"][strategy] for r in longs]
        digest = stored[0]["signature"]["candidates"]
        if any(x["signature"]["candidates"] != digest for x in stored):
            raise SystemExit(f"the --run directories were evaluated on other {strategy} "
                             "candidates")
        settings = stored[0]["signature"]["settings"]
        table = eval_instances(data, settings["split"], max_instances=settings["max_instances"],
                               seed=settings["seed"], candidates=strategy)
        task_of_row = {i: name_of[int(t)] for i, t in enumerate(table.task)}
        per_seed = [per_task_values(x, task_of_row) for x in stored]
        mine = {t: {"rows": per_seed[0][t]["rows"],
                    **{m: np.mean([p[t][m] for p in per_seed], axis=0) for m in METRICS}}
                for t in per_seed[0]}
        mean = {t: {m: float(np.mean([x["metrics"][t][m] for x in stored])) for m in METRICS}
                for t in mine}
        std = {t: {m: float(np.std([x["metrics"][t][m] for x in stored],
                                   ddof=1 if len(stored) > 1 else 0)) for m in METRICS}
               for t in mine}
        committed = json.loads((RESULTS / f"{stem}.json").read_text())
        short = committed["models"][args.short]
        rows = {args.label: {"seeds": len(stored), "steps": [r["steps"] for r in runs],
                             "metrics": mean, "std": std,
                             "per_seed": [x["metrics"] for x in stored]},
                f"{args.short} (800 steps, committed)": {
                    "seeds": len(short["runs"]), "steps": [r["steps"] for r in short["runs"]],
                    "metrics": short["mean"], "std": short["std"]}}
        tests: dict[str, dict] = {}
        for name, other in others.items():
            if strategy not in other["evals"]:
                continue
            ostored = other["evals"][strategy]
            if ostored["signature"]["candidates"] != digest:
                raise SystemExit(f"{name}: evaluated on other {strategy} candidates")
            rows[name] = {"seeds": 1, "steps": [other["info"]["steps"]],
                          "metrics": ostored["metrics"]}
            theirs = per_task_values(ostored, task_of_row)
            for task, vals in theirs.items():
                pos = {r: j for j, r in enumerate(mine[task]["rows"])}
                idx = np.array([pos[r] for r in vals["rows"]])
                for m in METRICS:
                    res = paired_test(mine[task][m][idx], vals[m])
                    tests.setdefault(name, {}).setdefault(task, {})[m] = {
                        "n": len(idx), "diff": res.diff, "p_value": res.p_value}
        report["strategies"][strategy] = {"rows": rows, "tests": tests, "candidates": digest}

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    text = markdown(report)
    args.out.with_suffix(".md").write_text(text)
    print(text)


def markdown(r: dict) -> str:
    tc = r["train_config"]
    lines = [
        f"# GenSR with the full 60-minute training budget ({r['data']})", "",
        f"`{r['label']}`: the recommended GenSR of configs/compare_fair_cpu.yaml, lr {tc['lr']} "
        f"with {tc['warmup_steps']} warm-up steps and linear decay over "
        f"{tc.get('max_steps')} steps or {tc['max_epochs']} epochs, stopped by the "
        f"{tc['time_budget_min']:g}-minute time budget; validation every {tc['eval_every']} "
        f"steps on {tc['eval_max_instances']} instances, the best kept.", "",
        "| run | steps | epochs | best step | stop | train min | device |",
        "|---|---:|---:|---:|---|---:|---|"]
    for run in r["runs"]:
        lines.append(f"| `{run['run']}` | {run['steps']} | {run['epochs']} | "
                     f"{run['best_step']} | {run['stop_reason']} | "
                     f"{run['wall_time_s'] / 60:.1f} | {run['device_name']} |")
    lines += ["", "## Validation curves (mean N@10 over both tasks; * = best)", ""]
    steps = sorted({h["step"] for run in r["runs"] for h in run["curve"]})
    lines += ["| step | " + " | ".join(f"seed {run['seed']}" for run in r["runs"]) + " |",
              "|---:|" + "---:|" * len(r["runs"])]
    for step in steps:
        cells = []
        for run in r["runs"]:
            h = next((h for h in run["curve"] if h["step"] == step), None)
            star = " *" if h is not None and step == int(run["best_step"]) else ""
            cells.append("–" if h is None else f"{h['value']:.4f}{star}")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    for strategy, block in r["strategies"].items():
        lines += ["", f"## Test, {strategy} candidates", "",
                  f"Mean ± std over seeds; p: paired t-test of `{r['label']}` (per-instance "
                  "metric averaged over its seeds) against that run over their shared test "
                  "instances, two-sided. The 800-step row comes from the committed table "
                  "(no per-instance values, no test).", "",
                  "| model | seeds | steps | " + " | ".join(
                      f"{TASKS[t]} {m}" for t in TASKS for m in METRICS) + " |",
                  "|---|---:|---|" + "---:|" * (len(TASKS) * len(METRICS))]
        for name, row in block["rows"].items():
            cells = []
            for t in TASKS:
                for m in METRICS:
                    v = row["metrics"].get(t, {}).get(m)
                    sd = (row.get("std") or {}).get(t, {}).get(m)
                    test = block["tests"].get(name, {}).get(t, {}).get(m)
                    cell = "–" if v is None else f"{v:.4f}"
                    if v is not None and sd is not None and row["seeds"] > 1:
                        cell += f" ± {sd:.4f}"
                    if test is not None:
                        cell += f" (p {test['p_value']:.2g})"
                    cells.append(cell)
            steps_text = ", ".join(str(x) for x in row["steps"])
            lines.append(f"| {name} | {row['seeds']} | {steps_text} | " + " | ".join(cells)
                         + " |")
    if r.get("note"):
        lines += ["", r["note"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
