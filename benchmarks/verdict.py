"""The verdict (protocol v2): every data set × protocol, every model, 3 seeds, one report.

    python benchmarks/verdict.py                          # scientific and longsyn, all steps
    python benchmarks/verdict.py --datasets longsyn --skip-full
    python benchmarks/verdict.py --stored-only            # only the finished runs on disk
    python benchmarks/verdict.py --datasets longsyn --merge   # redo one, keep the others
    python benchmarks/verdict.py --render-only --summary FINDINGS.md   # rewrite the .md

For each data set ``D`` (``data/D``, its CF table ``data/D_cf/cf.safetensors``, runs in
``runs/verdict_D``; the commands that make them are in configs/verdict_cpu.yaml):

1. ``gensr compare`` with ``configs/verdict_cpu.yaml`` on the ``uniform``, ``bm25-hard`` and
   ``dense-hard`` (held out from every training sampler) candidates: it trains what is missing
   (3 seeds) and reuses the rest; † = the seed-aware two-level bootstrap.
2. The full catalogue, on the same seeded test subset: the models that rank every item
   directly (SASRec, TEM, LightGCN, pop, BM25) under full ranking, and the models that
   cannot (GenSR, disc, UniSAR) reranking the top 100 of each retriever (rec: LightGCN,
   SASRec seed 0; search: BM25, TEM seed 0): alone, reranked, and fused with the retriever's
   score (the weight chosen on ``--fuse-valid`` valid instances per run,
   :func:`choose_fusion_weight`).
3. Quality against minutes: every trained model's validation metric against its training
   minutes (``run.json`` history), one PNG per data set.

Writes ``benchmarks/results/verdict.{md,json}`` and ``verdict_minutes_D.png``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CONFIG = ROOT / "configs" / "verdict_cpu.yaml"
PROTOCOLS = ("uniform", "bm25-hard", "dense-hard")
MODELS = ("gensr", "gensr-v1", "gensr-paper", "disc", "unisar", "sasrec", "tem", "pop", "bm25",
          "random")
RERANKERS = ("gensr", "gensr-v1", "gensr-paper", "disc", "unisar")
RETRIEVERS = {"lightgcn": "rec", "sasrec": "rec", "bm25": "src", "tem": "src"}
SHOWN = ("R@10", "N@10")
FUSE_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
PROTOCOL_NOTES = {
    "uniform": "99 uniform negatives the user never touched (the paper's protocol)",
    "bm25-hard": "search: the 99 top-BM25 items for the query; rec: uniform (GenSAR's)",
    "dense-hard": "the 99 items most similar by MiniLM sentence embeddings to the query "
                  "(search) or to the last 5 history items (rec): held out, no sampler "
                  "draws negatives this way",
}


def log(message: str) -> None:
    print(message, flush=True)


# --- 1. the sampled protocols -----------------------------------------------------------------
def stored_config(out: Path, models: tuple[str, ...], into: Path) -> tuple[Path, tuple[str, ...]]:
    """A copy of the config whose models run only the seeds finished in ``out``.

    For ``--stored-only``: nothing is trained; a model with no finished run is left out (and
    the report says so). Returns the config path and the models kept."""
    import yaml

    from gensr.runs import FINISHED

    doc = yaml.safe_load(CONFIG.read_text())
    kept = []
    for name in models:
        seeds = []
        for run_json in sorted((out / name).glob("seed*/run.json")):
            if json.loads(run_json.read_text()).get("status") in FINISHED:
                seeds.append(int(run_json.parent.name.removeprefix("seed")))
        if not seeds:
            log(f"  --stored-only: {name} has no finished run in {out}: left out")
            continue
        entry = doc["models"].setdefault(name, {}) or {}
        entry["seeds"] = seeds
        doc["models"][name] = entry
        kept.append(name)
    into.write_text(yaml.safe_dump(doc, sort_keys=False))
    return into, tuple(kept)


def run_compare(dataset: str, protocol: str, models: tuple[str, ...], progress: bool,
                stored_only: bool = False) -> dict:
    """``gensr compare`` of ``models`` on ``dataset`` under one candidate ``protocol``."""
    import tempfile

    from gensr.compare import compare

    out = ROOT / "runs" / f"verdict_{dataset}"
    with tempfile.TemporaryDirectory() as tmp:
        config = CONFIG
        if stored_only:
            config, models = stored_config(out, models, Path(tmp) / "verdict_stored.yaml")
        return compare(ROOT / "data" / dataset, ",".join(models), out, config_path=config,
                       cf_path=ROOT / "data" / f"{dataset}_cf" / "cf.safetensors",
                       candidates=protocol, progress=progress, device="cpu", log=log)


# --- 2. the full catalogue ----------------------------------------------------------------------
def full_catalogue(dataset: str, report: dict, max_instances: int | None,
                   rerankers: tuple[str, ...] = RERANKERS, fuse_valid: int = 1000) -> dict:
    """Full ranking of the score_all models, and every reranker over every retriever."""
    from gensr.data import load_data
    from gensr.eval.protocol import evaluate_full
    from gensr.eval.rerank import choose_fusion_weight, evaluate_rerank
    from gensr.eval.significance import seed_bootstrap
    from gensr.models.registry import model_class
    from gensr.retrieve import build_retriever
    from gensr.runs import load_run, prepare_inference

    data = load_data(ROOT / "data" / dataset)
    cf = ROOT / "data" / f"{dataset}_cf" / "cf.safetensors"
    seed = report["eval"]["seed"]
    out: dict = {"direct": {}, "rerank": {}, "max_instances": max_instances, "n": 100,
                 "fuse_valid": fuse_valid}
    # direct full ranking: trained runs (every seed) and the reference scorers
    direct = {"lightgcn": [("lightgcn", None)], "pop": [("pop", None)], "bm25": [("bm25", None)]}
    for name in ("sasrec", "tem"):
        direct[name] = [(name, Path(r["run_dir"])) for r in report["models"][name]["runs"]]
    for name, runs in direct.items():
        rows = []
        for kind, run in runs:
            start = time.time()
            if run is None:
                cls = model_class(kind)
                config = cls.config_class(**({"cf_path": str(cf)} if kind == "lightgcn" else {}))
                model = cls(config, data)
            else:
                model, _ = load_run(run, data, "cpu")
            metrics = evaluate_full(model, data, "test", progress=False,
                                    max_instances=max_instances, seed=seed)
            rows.append({"run": str(run) if run else None, "metrics": metrics,
                         "seconds": round(time.time() - start, 1)})
        out["direct"][name] = rows
        log(f"  full {name}: " + "  ".join(f"{t} N@10 {m['N@10']:.4f}"
                                           for t, m in rows[0]["metrics"].items()))
    # retrieve -> rerank (-> fuse) for the models that cannot rank every item
    specs = {"lightgcn": f"lightgcn={cf}", "bm25": "bm25",
             "sasrec": f"sasrec={report['models']['sasrec']['runs'][0]['run_dir']}",
             "tem": f"tem={report['models']['tem']['runs'][0]['run_dir']}"}
    retrievers = {name: build_retriever(spec, data, device="cpu") for name, spec in specs.items()}
    for name in rerankers:
        if name not in report["models"]:
            continue
        per_retriever: dict = {}
        models = []  # each run's model, loaded once for every retriever
        for run in report["models"][name]["runs"]:
            model, _ = load_run(Path(run["run_dir"]), data, "cpu")
            prepare_inference(model)
            models.append(model)
        for rname, retriever in retrievers.items():
            task = RETRIEVERS[rname]
            if task not in report["models"][name]["tasks"]:
                continue
            rows = []
            for run, model in zip(report["models"][name]["runs"], models):
                start = time.time()
                valid = evaluate_rerank(model, retriever, data, "valid", n=100, tasks=(task,),
                                        progress=False, max_instances=fuse_valid,
                                        seed=seed, fuse=FUSE_GRID)
                weight = choose_fusion_weight(valid)
                test = evaluate_rerank(model, retriever, data, "test", n=100, tasks=(task,),
                                       progress=False, max_instances=max_instances,
                                       seed=seed, fuse=(weight,))
                rows.append({"seed": run["seed"], "weight": weight,
                             "alone": test.retriever[task], "rerank": test.rerank[task],
                             "fused": test.fused[weight][task],
                             "valid_fused": {str(w): m[task]["N@10"]
                                             for w, m in valid.fused.items()},
                             "seconds": round(time.time() - start, 1),
                             "_per": test.per_instance, "_weight_key": f"fused:{weight}"})
            per_retriever[rname] = _summarise_rerank(rows, task, seed_bootstrap)
            best = per_retriever[rname]
            log(f"  {name} ∘ {rname}: alone N@10 {best['alone']['N@10']:.4f}, reranked "
                f"{best['rerank']['N@10']['mean']:.4f}, fused {best['fused']['N@10']['mean']:.4f}"
                f" ({best['seconds']:.0f}s)")
        out["rerank"][name] = per_retriever
    return out


def _summarise_rerank(rows: list[dict], task: str, seed_bootstrap) -> dict:
    """Mean ± std over seeds, and seed-aware tests of reranked / fused against alone."""
    alone = rows[0]["alone"]  # the retriever is the same for every seed of the reranker
    summary: dict = {"task": task, "alone": {m: alone[m] for m in SHOWN},
                     "weights": [r["weight"] for r in rows],
                     "seconds": sum(r["seconds"] for r in rows), "seeds": len(rows)}
    for who in ("rerank", "fused"):
        summary[who] = {}
        for m in SHOWN:
            values = np.array([r[who][m] for r in rows])
            summary[who][m] = {"mean": float(values.mean()),
                               "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
        per = np.stack([r["_per"]["rerank" if who == "rerank" else r["_weight_key"]][task]
                        ["N@10"] for r in rows])
        base = rows[0]["_per"]["retriever"][task]["N@10"][None]
        summary[who]["vs_alone_N@10"] = seed_bootstrap(per, base, n_boot=5000).to_dict()
    return summary


# --- 3. quality against minutes ----------------------------------------------------------------
def minutes_curves(report: dict) -> dict[str, list[list[tuple[float, float]]]]:
    """model -> one (minutes, validation metric) curve per trained run (run.json history;
    runs written before minutes were recorded: steps × the run's mean minutes a step)."""
    curves: dict[str, list[list[tuple[float, float]]]] = {}
    for name, entry in report["models"].items():
        if not entry["trainable"]:
            continue
        for run in entry["runs"]:
            info = json.loads((Path(run["run_dir"]) / "run.json").read_text())
            per_step = info["wall_time_s"] / 60 / max(info["steps"], 1)
            curve = [(h.get("minutes", h["step"] * per_step), h["value"])
                     for h in info["history"]]
            curves.setdefault(name, []).append(curve)
    return curves


def plot_minutes(dataset: str, curves: dict, metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, (name, runs) in enumerate(sorted(curves.items())):
        color = f"C{i % 10}"
        for j, curve in enumerate(runs):
            xs, ys = zip(*curve)
            ax.plot(xs, ys, color=color, alpha=0.9 if j == 0 else 0.45, lw=1.4,
                    label=name if j == 0 else None, marker="o", ms=2.5)
    ax.set_xlabel("training minutes (2-core CPU, shared; validations included)")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title(f"{dataset}: quality against training minutes (every seed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- the report -----------------------------------------------------------------------------------
def lever_settings(report: dict) -> dict[str, dict]:
    """Each model's training lever settings, from its first run's run.json."""
    out = {}
    for name, entry in report["models"].items():
        info = json.loads((Path(entry["runs"][0]["run_dir"]) / "run.json").read_text())
        tc, mc = info.get("train_config", {}), info.get("model_config", {})
        levers = {}
        if entry["trainable"]:
            levers["negatives"] = (f"{tc.get('hard_negatives', 0)} of {tc.get('n_negatives')} "
                                   f"hard ({tc.get('hard_source', 'bm25')})"
                                   if tc.get("hard_negatives") else
                                   f"{tc.get('n_negatives')} uniform")
        for key in ("user_vector", "listwise_weight", "candidate_text_len", "item_embedding",
                    "behaviour_marker", "query_match"):
            if mc.get(key):
                levers[key] = mc[key]
        out[name] = levers
    return out


def _cell(mean: float, std: float, mark: str = "") -> str:
    return f"{mean:.4f} ± {std:.4f}{mark}" if std else f"{mean:.4f}{mark}"


def protocol_table(report: dict) -> list[str]:
    from gensr.compare.report import decisive_p

    sig = report["significance"]["results"]
    alpha = report["significance"]["alpha"]
    names = list(report["models"])
    lines = ["| task | metric | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for task, title in (("rec", "Rec"), ("src", "Search")):
        for m in SHOWN:
            cells = []
            values = {n: e["mean"][task][m] for n, e in report["models"].items()
                      if task in e["mean"]}
            best = max(values.values()) if values else None
            for n in names:
                e = report["models"][n]
                if task not in e["mean"]:
                    cells.append("–")
                    continue
                r = sig.get(n, {}).get(task, {}).get(m)
                mark = "†" if r is not None and decisive_p(r) < alpha else ""
                text = _cell(e["mean"][task][m], e["std"][task][m], mark)
                cells.append(f"**{text}**" if values[n] == best else text)
            lines.append(f"| {title} | {m} | " + " | ".join(cells) + " |")
    return lines


def headline_table(per: dict, metric: str = "N@10") -> list[str]:
    """One row per model: its test ``metric`` under every protocol and task (mean ± std over
    seeds, † = differs from gensr by the seed-aware test), then its seeds."""
    from gensr.compare.report import decisive_p

    cols = [(protocol, task) for task in ("rec", "src") for protocol in per["protocols"]
            if not (task == "rec" and protocol == "bm25-hard")]  # rec bm25-hard = uniform
    names = list(next(iter(per["protocols"].values()))["models"])
    head = " | ".join(f"{'rec' if t == 'rec' else 'search'} {p}" for p, t in cols)
    lines = [f"| model | {head} | seeds |", "|---|" + "---|" * (len(cols) + 1)]
    best = {}
    for p, t in cols:
        vals = [e["mean"][t][metric] for e in per["protocols"][p]["models"].values()
                if t in e["mean"]]
        best[(p, t)] = max(vals) if vals else None
    for n in names:
        cells = []
        for p, t in cols:
            report = per["protocols"][p]
            e = report["models"].get(n)
            if e is None or t not in e["mean"]:
                cells.append("–")
                continue
            r = report["significance"]["results"].get(n, {}).get(t, {}).get(metric)
            mark = "†" if r is not None and decisive_p(r) < report["significance"]["alpha"] else ""
            text = _cell(e["mean"][t][metric], e["std"][t][metric], mark)
            cells.append(f"**{text}**" if e["mean"][t][metric] == best[(p, t)] else text)
        seeds = len(next(iter(per["protocols"].values()))["models"][n]["runs"])
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {seeds} |")
    return lines


def ci_table(report: dict, metric: str = "N@10") -> list[str]:
    ref = report["significance"]["reference"]
    lines = [f"| {ref} vs | task | Δ{metric} | 95% CI (seeds × instances) | p | p (instances "
             "only) |", "|---|---|---|---|---|---|"]
    for other, per_task in report["significance"]["results"].items():
        for task, per_metric in per_task.items():
            r = per_metric.get(metric)
            if not r or "seed_aware" not in r:
                continue
            s = r["seed_aware"]
            mark = "†" if s["p_value"] < report["significance"]["alpha"] else ""
            lines.append(f"| {other} | {task} | {s['diff']:+.4f}{mark} | [{s['ci_low']:+.4f}, "
                         f"{s['ci_high']:+.4f}] | {s['p_value']:.4f} | {r['p_value']:.4g} |")
    return lines


def runs_table(report: dict) -> list[str]:
    from gensr.runs import STOP_REASONS

    lines = ["| model | seeds | training minutes (each seed) | steps (best) | stop |",
             "|---|---|---|---|---|"]
    for name, entry in report["models"].items():
        if not entry["trainable"]:
            continue
        runs = entry["runs"]
        lines.append(f"| {name} | {len(runs)} | "
                     + ", ".join(f"{r['train_time_s'] / 60:.1f}" for r in runs) + " | "
                     + ", ".join(f"{r['steps']} ({r['best_step']})" for r in runs) + " | "
                     + ", ".join(sorted({STOP_REASONS.get(r["stop_reason"], str(r["stop_reason"]))
                                         for r in runs})) + " |")
    return lines


def full_table(full: dict) -> list[str]:
    lines = ["| system | task | R@10 | N@10 | vs the retriever alone (N@10, seeds × instances) |",
             "|---|---|---|---|---|"]
    for name, rows in full["direct"].items():
        for task in rows[0]["metrics"]:
            vals = {m: np.array([r["metrics"][task][m] for r in rows]) for m in SHOWN}
            lines.append(f"| {name} (full ranking) | {task} | "
                         + " | ".join(_cell(v.mean(), v.std(ddof=1) if len(v) > 1 else 0.0)
                                      for v in vals.values()) + " | |")
    for name, per_retriever in full["rerank"].items():
        for rname, s in per_retriever.items():
            lines.append(f"| {rname} alone | {s['task']} | {s['alone']['R@10']:.4f} | "
                         f"{s['alone']['N@10']:.4f} | |")
            for who, label in (("rerank", f"{name} ∘ {rname}"),
                               ("fused", f"{name} ∘ {rname}, fused (w {s['weights']})")):
                t = s[who]["vs_alone_N@10"]
                mark = "†" if t["p_value"] < 0.05 else ""
                lines.append(f"| {label} | {s['task']} | "
                             + " | ".join(_cell(s[who][m]["mean"], s[who][m]["std"])
                                          for m in SHOWN)
                             + f" | {t['diff']:+.4f}{mark} [{t['ci_low']:+.4f}, "
                               f"{t['ci_high']:+.4f}] |")
    return lines


def markdown(result: dict) -> str:
    out = ["# The verdict: protocol v2 on every data set", "",
           f"Generated {result['created']} by `python benchmarks/verdict.py` "
           f"(config `configs/verdict_cpu.yaml`; {result['machine']}).", ""]
    out += result.get("summary", [])
    for dataset, per in result["datasets"].items():
        out += [f"## {dataset}", ""]
        first = next(iter(per["protocols"].values()))
        out += ["**Training levers** (the same for every trained model, the *-uni rows "
                "excepted):", ""]
        out += [f"- {n}: " + (", ".join(f"{k} {v}" for k, v in lv.items()) or "none")
                for n, lv in per["levers"].items()]
        out += ["", "**Runs**", ""] + runs_table(first) + [""]
        out += ["**Test N@10 under every protocol** (mean ± std over seeds; † = differs from "
                "gensr, seed-aware; rec under bm25-hard is the uniform rec column):", ""]
        out += headline_table(per) + [""]
        out += [f"![quality against minutes](verdict_minutes_{dataset}.png)", ""]
        for protocol, report in per["protocols"].items():
            ev = report["eval"]
            out += [f"### {dataset}, {protocol} candidates", "",
                    f"{PROTOCOL_NOTES[protocol]}; test instances: {ev['instances']['rec']:,} "
                    f"rec + {ev['instances']['src']:,} search. Mean ± std over seeds; † = "
                    "gensr differs significantly (two-level bootstrap over seeds and "
                    "instances, p < 0.05).", ""]
            out += protocol_table(report) + [""] + ci_table(report) + [""]
        if per.get("full"):
            out += [f"### {dataset}, full catalogue", "",
                    "Train and valid items masked, the target never; rerankers score the "
                    "retriever's top 100; fused = z(reranker) + w · z(retriever), w chosen per "
                    f"run on {per['full'].get('fuse_valid', 1000):,} valid instances. † = "
                    "differs from the retriever alone (two-level bootstrap).", ""]
            out += full_table(per["full"]) + [""]
    return "\n".join(out) + "\n"


def write_full(dataset: str, full: dict, result: dict, into: Path) -> None:
    """``full_catalogue_D.{md,json}``: the full-catalogue part of one data set on its own."""
    stem = into / f"full_catalogue_{dataset}"
    stem.with_suffix(".json").write_text(json.dumps(
        strip({"created": result["created"], "machine": result["machine"],
               "config": result["config"], "data": dataset, "full": full}), indent=1))
    text = [f"# Full catalogue on {dataset}: alone, reranked, fused", "",
            f"Generated {result['created']} by `python benchmarks/verdict.py` (config "
            f"`{result['config']}`; {result['machine']}); the same rows are in "
            "[verdict.md](verdict.md). A seeded test subset of "
            f"{full['max_instances']:,} instances (both tasks; each task keeps its own), every "
            "item ranked with the user's train and valid items masked, the target never. "
            "Rerankers score the retriever's top 100 (a target the retriever missed scores 0); "
            "fused = z(reranker) + w · z(retriever), w chosen per run on "
            f"{full.get('fuse_valid', 1000):,} valid instances from (0, 0.25, 0.5, 1, 2, 4); "
            "w = 0 is the reranker alone. † = differs "
            "from the retriever alone (two-level bootstrap over the reranker's seeds and the "
            "instances, p < 0.05).", ""]
    stem.with_suffix(".md").write_text("\n".join(text + full_table(full)) + "\n")


def strip(obj):
    """The result without the per-instance arrays (kept out of the JSON)."""
    if isinstance(obj, dict):
        return {k: strip(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, list):
        return [strip(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="scientific,longsyn")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--protocols", default=",".join(PROTOCOLS))
    ap.add_argument("--skip-full", action="store_true", help="no full-catalogue evaluation")
    ap.add_argument("--full-instances", type=int, default=2000,
                    help="seeded test subset of the full-catalogue evaluation")
    ap.add_argument("--rerankers", default=",".join(RERANKERS),
                    help="the models that rerank each retriever's top 100 in the full catalogue")
    ap.add_argument("--fuse-valid", type=int, default=1000,
                    help="valid instances on which each run's fusion weight is chosen")
    ap.add_argument("--out", type=Path, default=RESULTS / "verdict")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--stored-only", action="store_true",
                    help="train nothing: each model's seeds are its finished runs on disk")
    ap.add_argument("--summary", type=Path, default=None,
                    help="a Markdown file of findings, printed under the title")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other data sets of an existing OUT.json; replace these")
    ap.add_argument("--render-only", action="store_true",
                    help="evaluate nothing: write OUT.md again from OUT.json (and --summary)")
    args = ap.parse_args(argv)
    if args.render_only:
        result = json.loads(args.out.with_suffix(".json").read_text())
        if args.summary is not None:
            result["summary"] = args.summary.read_text().splitlines() + [""]
            args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
        args.out.with_suffix(".md").write_text(markdown(result))
        log(f"wrote {args.out.with_suffix('.md')} from {args.out.with_suffix('.json')}")
        return 0
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    result: dict = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "machine": f"{platform.processor() or platform.machine()}, "
                               f"{torch.get_num_threads()} threads, torch {torch.__version__}",
                    "config": str(CONFIG.relative_to(ROOT)), "datasets": {}}
    if args.merge and args.out.with_suffix(".json").exists():
        result["datasets"] = json.loads(args.out.with_suffix(".json").read_text())["datasets"]
    if args.summary is not None:
        result["summary"] = args.summary.read_text().splitlines() + [""]
    models = tuple(m for m in args.models.split(",") if m)
    for dataset in args.datasets.split(","):
        per: dict = {"protocols": {}}
        for protocol in args.protocols.split(","):
            log(f"== {dataset}: {protocol}")
            per["protocols"][protocol] = run_compare(dataset, protocol, models, args.progress,
                                                     args.stored_only)
        first = next(iter(per["protocols"].values()))
        per["levers"] = lever_settings(first)
        curves = minutes_curves(first)
        per["minutes"] = curves
        plot_minutes(dataset, curves, "mean/N@10 (its own tasks)",
                     args.out.parent / f"verdict_minutes_{dataset}.png")
        if not args.skip_full:
            log(f"== {dataset}: full catalogue")
            per["full"] = full_catalogue(dataset, first, args.full_instances,
                                         tuple(r for r in args.rerankers.split(",") if r),
                                         args.fuse_valid)
            write_full(dataset, per["full"], result, args.out.parent)
        result["datasets"][dataset] = per
    args.out.with_suffix(".json").write_text(json.dumps(strip(result), indent=1))
    args.out.with_suffix(".md").write_text(markdown(result))
    log(f"wrote {args.out.with_suffix('.md')} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
