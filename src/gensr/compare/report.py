"""``gensr compare``'s report: means over seeds, the paired tests' marks, and the Markdown
of ``compare.md`` (the paper's Tables 2–3 layout, the tests, the runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from gensr.data.batching import TASK_INDEX, InstanceTable
from gensr.data.schema import TASK_TITLES
from gensr.errors import RunError
from gensr.eval.tables import TABLE_METRICS, Cell, to_markdown
from gensr.metrics import KS, metric_names
from gensr.reuse import RunEval
from gensr.runs import STOP_REASONS

SIGNIFICANCE_MARK = "†"
SIGNIFICANCE_MARK = "†"
CANDIDATE_NOTES = {
    "dense-hard": "{n} negatives most similar to the query (search) or to the last 5 history "
                  "items (recommendation) by MiniLM sentence embeddings of the item text, among "
                  "the items the user never interacted with (held out: no training sampler "
                  "draws negatives this way)",
    "uniform": "{n} negatives drawn uniformly from the items the user never interacted with "
               "(the paper's protocol)",
    "bm25-hard": "search: the {n} items with the highest BM25 score for the query that the "
                 "user never interacted with (GenSAR's protocol); recommendation: the uniform "
                 "negatives",
    "popular": "{n} negatives drawn without replacement with probability ∝ 1 + training "
               "count, among the items the user never interacted with",
}


def summarise(runs: list[dict[str, Any]]) -> tuple[dict[str, dict[str, float]],
                                                   dict[str, dict[str, float]]]:
    """Mean and sample standard deviation (n − 1; 0 for one run) per task and metric."""
    mean: dict[str, dict[str, float]] = {}
    std: dict[str, dict[str, float]] = {}
    tasks = sorted({t for r in runs for t in r["metrics"]})
    for task in tasks:
        mean[task], std[task] = {}, {}
        for name in metric_names(KS):
            values = np.array([r["metrics"][task][name] for r in runs if task in r["metrics"]])
            mean[task][name] = float(values.mean())
            std[task][name] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return mean, std


def seed_means(evals: list[RunEval], task_of_row: np.ndarray
               ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """Per task: each instance's table metrics averaged over a model's runs, and the rows
    (evaluation-table indices) they belong to."""
    rows = evals[0].rows
    if any(not np.array_equal(e.rows, rows) for e in evals):
        raise RunError("the runs of one model were evaluated on different instances")
    values: dict[str, dict[str, np.ndarray]] = {}
    where: dict[str, np.ndarray] = {}
    for task, index in TASK_INDEX.items():
        sel = task_of_row[rows] == index
        if not sel.any():
            continue
        where[task] = rows[sel]
        values[task] = {m: np.mean([e.values[m][sel] for e in evals], axis=0)
                        for m in TABLE_METRICS}
    return values, where


def seed_stacks(evals: list[RunEval], task_of_row: np.ndarray
                ) -> dict[str, dict[str, np.ndarray]]:
    """Per task and table metric: the (runs, instances) values of a model's runs (the input
    of the seed-aware test, :func:`gensr.eval.significance.seed_bootstrap`)."""
    rows = evals[0].rows
    out: dict[str, dict[str, np.ndarray]] = {}
    for task, index in TASK_INDEX.items():
        sel = task_of_row[rows] == index
        if sel.any():
            out[task] = {m: np.stack([e.values[m][sel] for e in evals]) for m in TABLE_METRICS}
    return out


def decisive_p(result: dict[str, Any]) -> float:
    """The p-value a † rests on: the seed-aware test's when there is one, else the paired
    per-instance test's."""
    return float(result.get("seed_aware", result)["p_value"])


def significance_marks(tests: dict[str, Any], alpha: float) -> dict[str, dict[str, dict[str,
                                                                                         str]]]:
    """model -> task -> metric -> "†" where the reference model differs at p < alpha (by the
    seed-aware test when the results hold one)."""
    marks: dict[str, dict[str, dict[str, str]]] = {}
    for model, per_task in tests.items():
        for task, per_metric in per_task.items():
            for metric, result in per_metric.items():
                if decisive_p(result) < alpha:
                    marks.setdefault(model, {}).setdefault(task, {})[metric] = \
                        SIGNIFICANCE_MARK
    return marks


def table_cells(models: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, Cell]]]:
    """Table cells: the value of a single run, (mean, std) over several seeds."""
    cells: dict[str, dict[str, dict[str, Cell]]] = {}
    for name, entry in models.items():
        several = len(entry["runs"]) > 1
        cells[name] = {
            task: {m: ((v, entry["std"][task][m]) if several else v) for m, v in row.items()}
            for task, row in entry["mean"].items()
        }
    return cells


def _fmt_time(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.1f} min"


def _joined(values: list[str]) -> str:
    """"a" when every run agrees, else "a, b, a" (one entry per run)."""
    return values[0] if len(set(values)) == 1 else ", ".join(values)


def runs_markdown(report: dict[str, Any]) -> str:
    """The runs table of compare.md: what ran, on which window and validation subset, how
    long, and why it stopped."""
    lines = ["| model | runs (seeds) | done | window | valid | epochs | steps (best) | stop "
             "| train time | eval time | run dirs |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    windows = report["windows"]
    for name, entry in report["models"].items():
        runs = entry["runs"]
        trained = any(r["trained"] for r in runs)
        seeds = ", ".join(str(r["seed"]) for r in runs)
        done = ", ".join(sorted({r["action"] for r in runs}))
        w = windows.get(name)
        window = f"{w['interactions']} ({w['mean_events']:g} events)" if w else "–"
        dash = "–"
        valid = _joined([str(r["valid_instances"]) if r["trained"] else dash for r in runs])
        epochs = _joined([f"{r['epochs']:g}" if r["trained"] and r["epochs"] is not None
                          else dash for r in runs])
        steps = ", ".join(f"{r['steps']} ({r['best_step']})" if r["trained"] else dash
                          for r in runs)
        stop = _joined([STOP_REASONS.get(r["stop_reason"], str(r["stop_reason"]))
                        if r["trained"] else dash for r in runs])
        train_s = sum(r["train_time_s"] for r in runs)
        eval_s = sum(r["eval_time_s"] for r in runs)
        dirs = ", ".join(f"`{Path(r['run_dir']).relative_to(report['out'])}`" for r in runs)
        lines.append(f"| {name} | {len(runs)} ({seeds}) | {done} | {window} | {valid} | "
                     f"{epochs} | {steps} | {stop} | {_fmt_time(train_s) if trained else dash} "
                     f"| {_fmt_time(eval_s)} | {dirs} |")
    return "\n".join(lines) + "\n"


def significance_markdown(report: dict[str, Any]) -> str:
    """The tests of the reference model against every other. With seed-aware results: one
    row per model, task and table metric with the difference (reference − model), its 95%
    interval and the seed-aware p (what † rests on), and the per-instance paired p beside it
    for information; without: one row per model and task, each metric's difference and p."""
    sig = report["significance"]
    ref = sig["reference"]
    seed_aware = any("seed_aware" in r for per_task in sig["results"].values()
                     for per_metric in per_task.values() for r in per_metric.values())
    if seed_aware:
        lines = [f"| {ref} vs | task | metric | seeds | instances | Δ | 95% CI | p (seeds × "
                 "instances) | p (instances only) |", "|---|---|---|---|---|---|---|---|---|"]
        for model, per_task in sig["results"].items():
            for task, per_metric in per_task.items():
                for m in TABLE_METRICS:
                    r = per_metric.get(m)
                    if r is None:
                        continue
                    sa = r["seed_aware"]
                    mark = SIGNIFICANCE_MARK if sa["p_value"] < sig["alpha"] else ""
                    lines.append(
                        f"| {model} | {TASK_TITLES.get(task, task)} | {m} | "
                        f"{sa['n_seeds_a']} vs {sa['n_seeds_b']} | {sa['n']:,} | "
                        f"{sa['diff']:+.4f}{mark} | [{sa['ci_low']:+.4f}, {sa['ci_high']:+.4f}] "
                        f"| {_fmt_p(sa['p_value'])} | {_fmt_p(r['p_value'])} |")
        return "\n".join(lines) + "\n"
    lines = [f"| {ref} vs | task | instances | " + " | ".join(f"Δ{m} (p)" for m in
                                                            TABLE_METRICS) + " |",
             "|---|---|---|" + "---|" * len(TABLE_METRICS)]
    for model, per_task in sig["results"].items():
        for task, per_metric in per_task.items():
            n = next(iter(per_metric.values()))["n"]
            cells = []
            for m in TABLE_METRICS:
                r = per_metric.get(m)
                if r is None:
                    cells.append("–")
                    continue
                mark = SIGNIFICANCE_MARK if r["p_value"] < sig["alpha"] else ""
                cells.append(f"{r['diff']:+.4f} ({_fmt_p(r['p_value'])}){mark}")
            lines.append(f"| {model} | {TASK_TITLES.get(task, task)} | {n:,} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt_p(p: float) -> str:
    return "p < 0.0001" if p < 1e-4 else f"p = {p:.4f}"


def compare_markdown(report: dict[str, Any]) -> str:
    """``compare.md``: the Tables 2–3 layout, the paired tests and the runs."""
    ev = report["eval"]
    n = ev["instances"]
    seeds = report["seeds"]
    strategy = ev["candidates"]
    title = (f"{report['data']['name']}: {ev['split']} split, "
             f"{n.get('rec', 0):,} rec + {n.get('src', 0):,} search instances, "
             f"{ev['n_candidates']} candidates each ({strategy} negatives)")
    sig = report["significance"]
    marks = significance_marks(sig["results"], sig["alpha"]) if sig["results"] else None
    body = [to_markdown(report["cells"], metrics=TABLE_METRICS, title=title, marks=marks)]
    notes = [f"Best value per row in **bold**; – = the model does not serve the task. Ties "
             f"counted as `{ev['ties']}`.",
             f"Candidates `{strategy}`: "
             f"{CANDIDATE_NOTES[strategy].format(n=ev['n_candidates'] - 1)}."]
    if report["n_seeds"] > 1:
        counts = {len(m["seeds"]) for m in report["models"].values() if m.get("trainable")}
        which = (f"seeds {seeds}" if len(counts) <= 1 else
                 "each model's seeds (the runs table; a model with one seed shows no ±)")
        notes.append(f"Mean ± sample standard deviation over {which} (models whose result "
                     "does not depend on a seed ran once).")
    total = ev.get("split_instances")
    used = sum(n.values())
    if ev["max_instances"] is not None and total is not None and used < total:
        notes.append(f"A seeded subset ({used:,} of the split's {total:,} instances: "
                     f"eval.max_instances = {ev['max_instances']}, seed {ev['seed']}), the "
                     "same instances for every model.")
    else:
        notes.append(f"Every instance of the {ev['split']} split ({used:,}), the same for "
                     "every model.")
    notes.append(window_note(report))
    if sig["results"]:
        if sig.get("seed_aware", True):
            notes.append(f"{SIGNIFICANCE_MARK} = {sig['reference']}'s difference from this "
                         f"model is significant across training seeds and instances (p < "
                         f"{sig['alpha']:g}, two-sided two-level bootstrap: every draw "
                         "resamples each model's seeds and the shared instances, "
                         f"{sig['n_boot']:,} draws; no multiple-comparison correction). The "
                         f"paired {sig['test']} over instances (each instance's metric "
                         "averaged over seeds) is listed beside it for information: it "
                         "ignores seed variance.")
            single = sorted(n for n, m in report["models"].items()
                            if m.get("trainable") and len(m["seeds"]) == 1)
            if single:
                notes.append("One training seed (" + ", ".join(single) + "): the bootstrap "
                             "has no seed variance to resample on that side, so a † there "
                             "rests on that seed and the instances, not on training seeds.")
        else:
            notes.append(f"{SIGNIFICANCE_MARK} = {sig['reference']}'s difference from this "
                         f"model is significant (p < {sig['alpha']:g}, two-sided paired "
                         f"{sig['test']} over the shared instances of the task, each "
                         "instance's metric averaged over seeds; no multiple-comparison "
                         "correction).")
    elif sig["skipped"]:
        notes.append(f"No significance tests: {sig['skipped']}.")
    validation = report["validation"]
    if validation is not None:
        notes.append(f"Every trained model early-stops on the same validation subset: "
                     f"{validation['max_instances']:,} valid instances (seed "
                     f"{validation['seed']}), each model keeping those of its tasks.")
    else:
        notes.append("Validation subsets are each model's own train settings (see *valid*; "
                     "set `validation:` in the config to share one).")
    body.append("\n".join(notes) + "\n")
    if sig["results"]:
        body.append(f"## {sig['reference']} against each model\n")
        body.append(significance_markdown(report))
    body.append("## Runs\n")
    body.append(runs_markdown(report))
    body.append("*window* = `max_his_len` interactions of the canonical log (every model "
                "counts its history in these rows); in brackets the mean number of past events "
                "they hold on the evaluated instances (a purchase's rec and src twins are one "
                "event). *valid* = validation instances; *stop* = why training ended.\n")
    cf = report.get("cf")
    extra = []
    if cf:
        extra.append(f"CF table: `{cf['path']}`"
                     + (f" (pretrained by compare in {_fmt_time(cf['time_s'])})"
                        if cf.get("pretrained_here") else ""))
    extra.append(f"Data `{report['data']['dir']}`, fingerprint `{report['data']['fingerprint']}`"
                 f", candidates `{strategy}` (digest `{ev['candidates_digest']}`); total "
                 f"{_fmt_time(report['total_time_s'])} on {report['device']}.")
    body.append("\n".join(extra) + "\n")
    return "\n".join(body)


def window_note(report: dict[str, Any]) -> str:
    """One line: the history window every model read, or a flag when they differ."""
    windows = report["windows"]
    if not windows:
        return "No model reads a history."
    by_window: dict[int, list[str]] = {}
    for name, w in windows.items():
        by_window.setdefault(w["interactions"], []).append(name)
    if len(by_window) == 1:
        (w, names), = by_window.items()
        stats = next(iter(windows.values()))
        return (f"History window: every model reads the last {w} interactions "
                f"(≈ {stats['mean_events']:g} past events on these instances).")
    shown = "; ".join(f"{', '.join(names)}: {w} interactions "
                      f"(≈ {windows[names[0]]['mean_events']:g} events)"
                      for w, names in sorted(by_window.items()))
    return (f"**Different history windows** (allow_different_windows: true): {shown}. The "
            "models did not read the same past.")


def write_instances(path: Path, table: InstanceTable,
                    seed_values: dict[str, tuple[dict[str, dict[str, np.ndarray]],
                                                 dict[str, np.ndarray]]]) -> None:
    """Every evaluated instance with each model's table metrics (mean over its seeds; null
    where the model does not serve the task): the input of the paired tests."""
    columns: dict[str, Any] = {
        "row": np.arange(len(table), dtype=np.int64),
        "user_id": table.user, "seq": table.seq,
        "task": np.where(table.task == TASK_INDEX["rec"], "rec", "src"),
    }
    for name, (values, rows) in seed_values.items():
        for metric in TABLE_METRICS:
            col = np.full(len(table), np.nan)
            for task, where in rows.items():
                col[where] = values[task][metric]
            columns[f"{name}/{metric}"] = col
    pl.DataFrame(columns).with_columns(
        [pl.col(c).fill_nan(None) for c in columns if "/" in c]).write_parquet(path)
