"""Does GenSR train as well with the fast CPU dropout masks (``Speed.dropout``, docs/speed.md)?

    git show 6a7cf34:benchmarks/results/compare_scientific_uniform.json > /tmp/torch_masks.json
    python benchmarks/fast_dropout_quality.py \\
        --torch-compare /tmp/torch_masks.json --model gensr \\
        --fast-run runs/fastdrop/gensr/seed0 --fast-run runs/fastdrop/gensr/seed1 ...

The torch side is a committed ``gensr compare`` result (its per-seed test metrics, trained with
torch's dropout); the fast side is the same model and config retrained with the fast masks,
evaluated by ``compare`` on the same test instances (checked: same data fingerprint, settings
and candidates digest). Changing the dropout masks is like changing the seed, so the test is
over seeds: mean ± std per side and Welch's t-test of the per-seed values (two-sided; with 3
seeds a side it detects only large differences). Writes
``benchmarks/results/fast_dropout_quality.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scipy import stats

from gensr.compare import stored_eval, summarise
from gensr.runs import read_run_info

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "fast_dropout_quality"
TASKS = {"rec": "Recommendation", "src": "Search"}
METRICS = ("N@10", "R@10", "N@5")


def torch_side(compare_json: Path, model: str) -> tuple[dict, dict]:
    """Per-seed metrics of ``model`` in a compare.json, and the evaluation it used."""
    doc = json.loads(compare_json.read_text())
    if model not in doc["models"]:
        raise SystemExit(f"{compare_json} has no model {model!r}: {sorted(doc['models'])}")
    runs = {r["seed"]: r["metrics"] for r in doc["models"][model]["runs"]}
    return runs, {"eval": doc["eval"], "fingerprint": doc["data"]["fingerprint"]}


def fast_side(run_dirs: list[Path], reference: dict) -> dict:
    """Per-seed metrics of the fast-mask runs, refused if evaluated on other instances."""
    out = {}
    ev = reference["eval"]
    for run in run_dirs:
        found = stored_eval(run)
        if found is None:
            raise SystemExit(f"{run}: no compare evaluation (run gensr compare on it first)")
        result, sig = found
        settings = sig.get("settings", {})
        same = (sig.get("data_fingerprint") == reference["fingerprint"]
                and sig.get("candidates") == ev["candidates_digest"]
                and all(settings.get(k) == ev[k] for k in ("split", "max_instances", "seed",
                                                           "ties", "candidates")))
        if not same:
            raise SystemExit(f"{run} was evaluated on other test instances than the torch side")
        out[read_run_info(run)["train_config"]["seed"]] = result.metrics
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--torch-compare", type=Path, required=True)
    ap.add_argument("--model", default="gensr")
    ap.add_argument("--fast-run", type=Path, action="append", required=True)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    torch_runs, reference = torch_side(args.torch_compare, args.model)
    fast_runs = fast_side(args.fast_run, reference)
    report: dict = {"model": args.model, "torch_compare": str(args.torch_compare),
                    "torch_seeds": sorted(torch_runs), "fast_seeds": sorted(fast_runs),
                    "fast_runs": [str(r) for r in args.fast_run], "eval": reference["eval"],
                    "tasks": {}}
    lines = [f"# {args.model}: torch's dropout masks against the fast CPU masks", "",
             f"Torch side: `{args.torch_compare}` (seeds {sorted(torch_runs)}). Fast side: the "
             f"same config retrained with `Speed.dropout = fast` (seeds {sorted(fast_runs)}), "
             "the same test instances. Mean ± std over seeds; p: Welch's t-test of the "
             "per-seed values, two-sided.", "",
             "| task | metric | torch masks | fast masks | Δ | p |",
             "|---|---|---:|---:|---:|---:|"]
    sides = {"torch": torch_runs, "fast": fast_runs}
    stat = {side: summarise([{"metrics": m} for _, m in sorted(runs.items())])
            for side, runs in sides.items()}  # (mean, sample std) per task and metric
    for task, name in TASKS.items():
        report["tasks"][task] = {}
        for m in METRICS:
            a, b = ({"values": [r[task][m] for _, r in sorted(sides[side].items())],
                     "mean": stat[side][0][task][m], "std": stat[side][1][task][m]}
                    for side in ("torch", "fast"))
            p = (float(stats.ttest_ind(b["values"], a["values"], equal_var=False).pvalue)
                 if len(a["values"]) > 1 and len(b["values"]) > 1 else float("nan"))
            report["tasks"][task][m] = {"torch": a, "fast": b, "diff": b["mean"] - a["mean"],
                                        "p_value": p}
            lines.append(f"| {name} | {m} | {a['mean']:.4f} ± {a['std']:.4f} | "
                         f"{b['mean']:.4f} ± {b['std']:.4f} | {b['mean'] - a['mean']:+.4f} | "
                         f"{p:.2g} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    text = "\n".join(lines) + "\n"
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
