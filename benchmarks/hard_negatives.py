"""Hard training negatives (``train.hard_negatives``, issue 15): each model trained with its
uniform negatives and with some of its search negatives drawn from the query's top-BM25
items, everything else equal, evaluated on the same test instances under uniform and
bm25-hard candidates.

    python benchmarks/hard_negatives.py \\
        --pair disc=runs/fair/disc/seed0,runs/fair/disc-hard/seed0 \\
        --pair gensr=runs/fair/gensr/seed0,runs/fair/gensr-hard2/seed0 ...

Each ``--pair LABEL=BASE,VARIANT`` names two run directories that ``gensr compare`` trained
and evaluated (``compare_eval[.bm25-hard].json``); any two such runs can be paired
(``--title``/``--intro`` say what they differ in, ``--out`` where to write). Writes
``benchmarks/results/hard_negatives.{md,json}``: per pair, candidate strategy and task the
base's and the variant's N@10 / R@10, the change and a paired t-test over the shared test
instances (two-sided), and each run's steps, stop reason and hard-negative setting.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gensr.compare import EvalSettings, evaluation_table, seed_means, stored_eval
from gensr.data.candidates import STRATEGIES
from gensr.eval.significance import paired_test
from gensr.runs import read_run_info

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "hard_negatives"
TASKS = {"rec": "Recommendation", "src": "Search"}
METRICS = ("N@10", "R@10")


def describe(run: Path) -> dict:
    """What the runs table says about one run."""
    info = read_run_info(run)
    tc = info["train_config"]
    return {"run": str(run), "model": info["model"], "steps": info["steps"],
            "best_step": info["best_step"], "epochs": info["epochs"],
            "stop_reason": info["stop_reason"], "train_min": float(info["wall_time_s"]) / 60,
            "hard_negatives": tc.get("hard_negatives", 0), "n_negatives": tc["n_negatives"],
            "data_dir": info["data_dir"]}


def compare_pair(base: Path, variant: Path, data, strategy: str) -> dict | None:
    """Per task: both runs' metrics and the paired test of variant − base (None when either
    run was not evaluated on ``strategy``)."""
    found = [stored_eval(run, strategy) for run in (base, variant)]
    if any(f is None for f in found):
        return None
    (a, sig_a), (b, sig_b) = found  # type: ignore[misc]
    if sig_a.get("candidates") != sig_b.get("candidates") or \
            sig_a.get("settings") != sig_b.get("settings"):
        raise SystemExit(f"{base} and {variant} were evaluated on different {strategy} "
                         "instances or settings")
    table = evaluation_table(data, EvalSettings(**sig_a["settings"]))
    values_a, rows_a = seed_means([a], table.task)
    values_b, rows_b = seed_means([b], table.task)
    out = {}
    for task in TASKS:
        if task not in rows_a or task not in rows_b:
            continue
        if list(rows_a[task]) != list(rows_b[task]):
            raise SystemExit(f"{base} and {variant} scored different {task} instances")
        cell = {"n": len(rows_a[task])}
        for m in METRICS:
            test = paired_test(values_b[task][m], values_a[task][m])
            cell[m] = {"base": a.metrics[task][m], "variant": b.metrics[task][m],
                       "diff": test.diff, "p_value": test.p_value}
        out[task] = cell
    return out


TITLE = "Hard training negatives (train.hard_negatives)"
INTRO = ("Each pair: the same model, config and seed, trained with uniform negatives (base) "
         "and with `hard_negatives` of its search instances' negatives drawn from the "
         "query's 100 top-BM25 items the user never touched in training (variant); rec "
         "instances keep uniform negatives.")


def markdown(report: dict) -> str:
    lines = [f"# {report.get('title') or TITLE}", "",
             f"{report.get('intro') or INTRO} Δ = variant − base, p: paired t-test over the "
             "shared test instances, two-sided.", "",
             "| pair | candidates | task | base N@10 | variant N@10 | Δ N@10 (p) | "
             "base R@10 | variant R@10 | Δ R@10 (p) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for label, pair in report["pairs"].items():
        for strategy, tasks in pair["strategies"].items():
            for task, cell in tasks.items():
                row = [label, strategy, TASKS[task]]
                for m in METRICS:
                    c = cell[m]
                    row += [f"{c['base']:.4f}", f"{c['variant']:.4f}",
                            f"{c['diff']:+.4f} ({c['p_value']:.2g})"]
                lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Runs", "", "| pair | run | model | hard negatives | steps (best) | "
              "epochs | stop | train min |", "|---|---|---|---:|---:|---:|---|---:|"]
    for label, pair in report["pairs"].items():
        for r in (pair["base"], pair["variant"]):
            lines.append(f"| {label} | `{r['run']}` | {r['model']} | {r['hard_negatives']} of "
                         f"{r['n_negatives']} | {r['steps']} ({r['best_step']}) | "
                         f"{float(r['epochs']):.2f} | {r['stop_reason']} | "
                         f"{r['train_min']:.1f} |")
    if report.get("note"):
        lines += ["", report["note"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pair", action="append", required=True, metavar="LABEL=BASE,VARIANT")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--note", default="", help="a closing paragraph for the Markdown")
    ap.add_argument("--title", default=TITLE, help="the Markdown's heading (other pairs of "
                    "runs than hard negatives, e.g. the fast dropout masks of docs/speed.md)")
    ap.add_argument("--intro", default=INTRO, help="what each pair's two runs differ in")
    args = ap.parse_args()

    from gensr.data import load_data

    report: dict = {"pairs": {}, "note": args.note, "title": args.title, "intro": args.intro}
    data = None
    for spec in args.pair:
        label, _, dirs = spec.partition("=")
        base, _, variant = dirs.partition(",")
        if not (label and base and variant):
            raise SystemExit(f"--pair {spec!r} is not LABEL=BASE_DIR,VARIANT_DIR")
        runs = [describe(Path(base)), describe(Path(variant))]
        data = data or load_data(runs[0]["data_dir"])
        strategies = {}
        for strategy in STRATEGIES:
            result = compare_pair(Path(base), Path(variant), data, strategy)
            if result is not None:
                strategies[strategy] = result
        report["pairs"][label] = {"base": runs[0], "variant": runs[1],
                                  "strategies": strategies}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
