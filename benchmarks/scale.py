"""KuaiSAR scale on one machine: every stage of gensr on load-generated logs of 1M-20M rows.

For each size (raw rows, rec + src; 19.7M is the paper's KuaiSAR): the load generator
(:mod:`gensr.data.loadgen`, random data with KuaiSAR's shape, **not** KuaiSAR) writes the raw
CSVs, then ``gensr data prepare kuaisar`` runs as a child process: wall time and peak RSS
(``os.wait4``'s ``ru_maxrss`` of that child). At the largest size, then:

* ``gensr pretrain-cf`` for one epoch (wall time, peak RSS);
* ``gensr train --model sasrec`` and ``--model gensr`` (a scratch T5, on the CF table above)
  for ``--train-steps`` steps: the time from launching the command to the end of its first
  optimizer step (twice for GenSR: the first build fills the token-table cache in the data
  directory, the second reads it), and steps/s over the steps after the first, against the
  same command on the smallest size;
* ``gensr evaluate`` of both runs on ``--eval-instances`` seeded test instances: instances/s
  (from the scoring loop, timed in the child).

Writes ``benchmarks/results/scale.json`` and ``scale.md`` (``--out`` to put them elsewhere).
The figures depend on the machine and on what else runs on it: run it on a quiet machine.

    python benchmarks/scale.py                                 # 1M, 5M, 20M
    python benchmarks/scale.py --sizes 200000 --out /tmp/scale  # a smoke run (minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
GIB = 1024**3
GENSR_SETS = ["model.backbone=scratch-t5", "train.batch_size=32"]
COMMON_SETS = ["train.progress=false", "train.eval_max_instances=50", "train.patience=0",
               "train.log_every=1000000"]


def run_child(cmd: list[str], log: Path) -> dict[str, Any]:
    """Run ``cmd`` (with this checkout's ``src`` first on the path) to the end; its start,
    wall time and peak RSS."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p))
    with log.open("w") as fh:
        start = time.time()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.time() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    return {"started": start, "wall_s": round(wall, 2),
            "peak_rss_gib": round(usage.ru_maxrss * 1024 / GIB, 3)}


def gensr(*args: str) -> list[str]:
    return [sys.executable, "-m", "gensr.cli", *args]


def sets(values: list[str]) -> list[str]:
    return [a for v in values for a in ("--set", v)]


def size_name(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}k"


def prepare_size(n: int, work: Path, seed: int) -> tuple[dict[str, Any], Path]:
    raw, data = work / f"raw-{size_name(n)}", work / f"data-{size_name(n)}"
    logs = work / "logs"
    gen = run_child([sys.executable, str(ROOT / "scripts" / "kuaisar_loadgen.py"),
                     "--interactions", str(n), "--out", str(raw), "--seed", str(seed),
                     "--overwrite"], logs / f"loadgen-{size_name(n)}.log")
    prep = run_child(gensr("data", "prepare", "kuaisar", "--raw", str(raw), "--out", str(data),
                           "--overwrite"), logs / f"prepare-{size_name(n)}.log")
    report = json.loads((data / "report.json").read_text())
    counts = report["counts"]
    row = {
        "interactions": n,
        "raw_rows": report["files_read"],
        "raw_bytes": sum(p.stat().st_size for p in raw.glob("*.csv")),
        "generate": {k: gen[k] for k in ("wall_s", "peak_rss_gib")},
        "prepare": {k: prep[k] for k in ("wall_s", "peak_rss_gib")},
        "canonical": {"users": counts["users"], "items": counts["items"],
                      "queries": counts["queries"], **counts["interactions"]},
    }
    print(f"{size_name(n)}: prepare {prep['wall_s']:.0f}s, peak {prep['peak_rss_gib']:.2f} GiB",
          flush=True)
    return row, data


def train(model: str, data: Path, out: Path, steps: int, cf: Path | None, logs: Path,
          tag: str) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    extra = GENSR_SETS if model == "gensr" else []
    cmd = gensr("train", "--model", model, "--data", str(data), "--out", str(out),
                *(["--cf", str(cf)] if cf else []),
                *sets([*COMMON_SETS, *extra, f"train.max_steps={steps}",
                       f"train.eval_every={steps}"]))
    done = run_child(cmd, logs / f"train-{model}-{tag}.log")
    run = json.loads((out / "run.json").read_text())
    timing = run["timing"]
    later = timing["steps"] - 1
    rate = later / (timing["last_step_done"] - timing["first_step_done"]) if later else None
    return {"first_step_s": round(timing["first_step_done"] - done["started"], 2),
            "steps_per_s": round(rate, 3) if rate else None, "steps": timing["steps"],
            "train_instances": run["train_instances"], "wall_s": done["wall_s"],
            "peak_rss_gib": done["peak_rss_gib"]}


EVAL_CHILD = textwrap.dedent("""
    import json, sys, time
    from gensr.eval.protocol import evaluate
    from gensr.runs import load_run, prepare_inference
    model, data = load_run(sys.argv[1], device="cpu")
    prepare_inference(model)
    start = time.time()
    metrics = evaluate(model, data, "test", batch_size=64, max_instances=int(sys.argv[2]),
                       progress=False)
    wall = time.time() - start
    n = sum(m["n"] for m in metrics.values())
    print(json.dumps({"instances": n, "score_s": round(wall, 2),
                      "instances_per_s": round(n / wall, 2)}))
""")


def evaluate(run: Path, instances: int, logs: Path, tag: str) -> dict[str, Any]:
    log = logs / f"evaluate-{tag}.log"
    done = run_child([sys.executable, "-c", EVAL_CHILD, str(run), str(instances)], log)
    result = json.loads(log.read_text().strip().splitlines()[-1])
    return {**result, "wall_s": done["wall_s"], "peak_rss_gib": done["peak_rss_gib"]}


def machine() -> dict[str, Any]:
    import torch

    mem = None
    try:
        with open("/proc/meminfo") as fh:
            mem = round(int(fh.readline().split()[1]) * 1024 / GIB, 1)
    except OSError:
        pass
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "memory_gib": mem, "python": platform.python_version(), "torch": torch.__version__,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# KuaiSAR scale on one machine",
        "",
        f"`python benchmarks/scale.py {result['args']}` on {m['cores']} cores, "
        f"{m['memory_gib']} GiB ({m['cpu']}), {result['created']}. Data: the **load "
        "generator** (`gensr.data.loadgen`: random logs with KuaiSAR's counts scaled and its "
        "skews, not KuaiSAR); its metrics mean nothing, its sizes and times are the point.",
        "",
        "## Prepare (`gensr data prepare kuaisar`)",
        "",
        "| raw rows | CSV size | generate | prepare | prepare peak RSS | users | items | "
        "queries | rec | src |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["sizes"]:
        c = row["canonical"]
        lines.append(
            f"| {row['interactions']:,} | {row['raw_bytes'] / GIB:.2f} GiB | "
            f"{row['generate']['wall_s']:.0f} s | {row['prepare']['wall_s']:.0f} s | "
            f"{row['prepare']['peak_rss_gib']:.2f} GiB | {c['users']:,} | {c['items']:,} | "
            f"{c['queries']:,} | {c['rec']:,} | {c['src']:,} |")
    st = result["stages"]
    lines += ["", f"## Later stages at {st['interactions']:,} raw rows", "",
              "| stage | figure | wall | peak RSS |", "|---|---|---:|---:|"]
    cf = st["pretrain_cf"]
    lines.append(f"| pretrain-cf, 1 epoch | {cf['edges']:,} edges | {cf['wall_s']:.0f} s | "
                 f"{cf['peak_rss_gib']:.2f} GiB |")
    for name, row in st["train"].items():
        small = row.get("small", {})
        lines.append(
            f"| train {name} | first step {row['first_step_s']:.0f} s after the command"
            + (f" (cached tokens: {row['cached']['first_step_s']:.0f} s)" if "cached" in row
               else "")
            + f"; {row['steps_per_s']} steps/s (small data: {small.get('steps_per_s')}) | "
              f"{row['wall_s']:.0f} s | {row['peak_rss_gib']:.2f} GiB |")
    for name, row in st["evaluate"].items():
        lines.append(f"| evaluate {name} | {row['instances_per_s']} instances/s "
                     f"({row['instances']:,} instances) | {row['wall_s']:.0f} s | "
                     f"{row['peak_rss_gib']:.2f} GiB |")
    lines += ["", "Targets at 20M: prepare <= 15 min and <= 12 GiB; the first training step "
              "within 2 minutes of the command.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000000,5000000,20000000",
                        help="comma-separated raw row counts (rec + src)")
    parser.add_argument("--work", default="/tmp/gensr-scale",
                        help="scratch folder for the CSVs, data directories and runs (about "
                             "4 GiB of disk for the default sizes)")
    parser.add_argument("--out", default=str(RESULTS / "scale"),
                        help="results path without suffix (.json and .md are written)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--eval-instances", type=int, default=1000)
    parser.add_argument("--cf-batch-size", type=int, default=65536)
    parser.add_argument("--cf-valid-max", type=int, default=2000)
    parser.add_argument("--keep", action="store_true", help="keep --work afterwards")
    args = parser.parse_args(argv)
    sizes = sorted(int(float(s)) for s in args.sizes.split(","))
    work = Path(args.work)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    logs = work / "logs"

    rows, data_dirs = [], {}
    for n in sizes:
        row, data_dirs[n] = prepare_size(n, work, args.seed)
        rows.append(row)
    big, small = sizes[-1], sizes[0]
    cf = work / f"cf-{size_name(big)}.safetensors"
    done = run_child(gensr("pretrain-cf", str(data_dirs[big]), "--out", str(cf), "--epochs", "1",
                           "--min-epochs", "1", "--batch-size", str(args.cf_batch_size),
                           "--valid-max", str(args.cf_valid_max), "--no-progress"),
                     logs / "pretrain-cf.log")
    card = json.loads(cf.with_suffix(".json").read_text())
    stages: dict[str, Any] = {
        "interactions": big,
        "pretrain_cf": {"wall_s": done["wall_s"], "peak_rss_gib": done["peak_rss_gib"],
                        "edges": card["graph"]["edges"], "batch_size": args.cf_batch_size,
                        "train_time_s": card["train_time_s"]},
        "train": {}, "evaluate": {}}
    print(f"pretrain-cf: {done['wall_s']:.0f}s", flush=True)
    cf_small = work / f"cf-{size_name(small)}.safetensors"
    if small != big:
        run_child(gensr("pretrain-cf", str(data_dirs[small]), "--out", str(cf_small),
                        "--epochs", "1", "--min-epochs", "1", "--no-progress"),
                  logs / "pretrain-cf-small.log")
    else:
        cf_small = cf
    for model in ("sasrec", "gensr"):
        use_cf, use_cf_small = (cf, cf_small) if model == "gensr" else (None, None)
        row = train(model, data_dirs[big], work / f"run-{model}", args.train_steps, use_cf,
                    logs, "big")
        if model == "gensr":  # again: the token tables now come from the cache
            row["cached"] = train(model, data_dirs[big], work / f"run-{model}",
                                  args.train_steps, use_cf, logs, "big-cached")
        row["small"] = train(model, data_dirs[small], work / f"run-{model}-small",
                             args.train_steps, use_cf_small, logs, "small")
        stages["train"][model] = row
        print(f"train {model}: first step {row['first_step_s']:.0f}s, "
              f"{row['steps_per_s']} steps/s", flush=True)
        stages["evaluate"][model] = evaluate(work / f"run-{model}", args.eval_instances, logs,
                                             model)
    result = {
        "benchmark": "benchmarks/scale.py",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "args": " ".join(argv if argv is not None else sys.argv[1:]) or "(defaults)",
        "data": "gensr.data.loadgen: a load generator (random, KuaiSAR-shaped), not KuaiSAR",
        "machine": machine(),
        "sizes": rows,
        "stages": stages,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
