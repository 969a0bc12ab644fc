#!/usr/bin/env python3
"""Fingerprint what gensr computes, to show that a refactor changed nothing.

Runs, through the command line of the gensr found first on ``PYTHONPATH``, on a small
synthetic world: ``gensr quickstart`` (short training), a small ``gensr compare`` (trained
GenSR, SASRec, TEM, disc, UniSAR and the reference scorers, two seeds), ``gensr evaluate
--save-scores`` of every compared run, and ``gensr evaluate --full --retriever`` with GenSR
reranking LightGCN and BM25. It writes every metric and a SHA-256 of every score array to
one JSON file; two such files (before and after a change) are compared with ``--diff``::

    PYTHONPATH=/path/to/old/src python scripts/house_equivalence.py --work /tmp/a --out a.json
    PYTHONPATH=src python scripts/house_equivalence.py --work /tmp/b --out b.json
    python scripts/house_equivalence.py --diff a.json b.json

Everything runs with one torch thread and fixed seeds, so two runs of the same code give the
same bytes; any difference is a change in behaviour.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

GENSR_MODEL = {"backbone": "scratch-t5", "scratch_d_model": 16, "scratch_vocab_size": 400,
               "item_text_tokens": 4, "scratch_heads": 2, "scratch_d_ff": 32,
               "scratch_layers": 1, "scratch_decoder_layers": 1}
COMPARE_CONFIG = {
    "seeds": [0, 1],
    "history_window": 6,
    "validation": {"max_instances": 200, "seed": 0},
    "defaults": {"train": {"batch_size": 32, "eval_every": 20, "eval_batch_size": 32,
                           "log_every": 1000, "threads": 1}},
    "models": {
        "gensr": {"model": GENSR_MODEL, "train": {"max_steps": 40}},
        "disc": {"model": {"backbone": "scratch-t5", "scratch_d_model": 16,
                           "scratch_vocab_size": 400, "item_text_tokens": 4},
                 "train": {"max_steps": 40}},
        "unisar": {"model": {"hidden": 16}, "train": {"max_steps": 40}},
        "sasrec": {"model": {"hidden": 16, "n_layers": 1}, "train": {"max_steps": 60}},
        "tem": {"model": {"hidden": 16}, "train": {"max_steps": 60}},
    },
    "eval": {"max_instances": 250, "batch_size": 32},
    "cf": {"epochs": 10, "min_epochs": 1, "dim": 16},
}
MODELS = "gensr,disc,unisar,sasrec,tem,pop,bm25,random"


def gensr(*args: str, cwd: Path) -> str:
    """Run the gensr CLI of this interpreter's PYTHONPATH; its output (fails loudly)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENSR_THREAD_GUARD": "0",
           "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-c", "from gensr.cli import main; main()", *args],
                          cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"gensr {' '.join(args)} failed ({proc.returncode}):\n"
                         f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def digest(values) -> str:
    arr = np.ascontiguousarray(np.asarray(values, dtype=np.float64))
    return hashlib.sha256(arr.tobytes() + str(arr.shape).encode()).hexdigest()[:20]


def parquet_digests(path: Path) -> dict[str, str]:
    import polars as pl

    frame = pl.read_parquet(path)
    out = {}
    for name in frame.columns:
        col = frame[name]
        if col.dtype == pl.Utf8:
            out[name] = hashlib.sha256("\n".join(col.to_list()).encode()).hexdigest()[:20]
        elif isinstance(col.dtype, pl.List):
            out[name] = digest(np.concatenate([np.asarray(v, dtype=np.float64)
                                               for v in col.to_list()] or [np.zeros(0)]))
        else:
            out[name] = digest(col.fill_null(float("nan")).to_numpy())
    return out


def fingerprint(work: Path) -> dict:
    import yaml

    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    result: dict = {}
    # 1. quickstart, on its own embedded data, with short training
    gensr("quickstart", "--out", str(work / "qs"), "--max-steps", "30", "--device", "cpu",
          cwd=work)
    result["quickstart"] = json.loads((work / "qs" / "results.json").read_text())["results"]
    # 2. a small compare on a small synthetic world
    data = work / "data"
    gensr("data", "prepare", "synthetic", "--out", str(data), "--option", "n_users=300",
          "--option", "n_items=200", "--option", "seed=7", cwd=work)
    config = work / "compare.yaml"
    config.write_text(yaml.safe_dump(COMPARE_CONFIG))
    gensr("compare", "--data", str(data), "--out", str(work / "cmp"), "--config", str(config),
          "--models", MODELS, "--device", "cpu", "--no-progress", cwd=work)
    report = json.loads((work / "cmp" / "compare.json").read_text())
    result["compare"] = {name: [run["metrics"] for run in entry["runs"]]
                         for name, entry in report["models"].items()}
    result["compare_significance"] = report["significance"]["results"]
    result["compare_instances"] = parquet_digests(work / "cmp" / "compare_instances.parquet")
    # 3. every run's saved scores
    result["scores"] = {}
    for name in MODELS.split(","):
        run = work / "cmp" / name / "seed0"
        out = work / f"scores_{name}.parquet"
        gensr("evaluate", str(run), "--save-scores", str(out), "--max-instances", "120",
              "--device", "cpu", cwd=work)
        result["scores"][name] = parquet_digests(out)
    # 4. GenSR reranking two retrievers in the full catalogue
    out = work / "rerank.parquet"
    gensr("evaluate", str(work / "cmp" / "gensr" / "seed0"), "--full", "--retriever",
          f"lightgcn={work / 'cmp' / 'cf.safetensors'}", "--retriever", "bm25",
          "--rerank-n", "20", "--max-instances", "120", "--save-scores", str(out),
          "--device", "cpu", cwd=work)
    rerank = json.loads((work / "cmp" / "gensr" / "seed0" / "metrics_test_rerank.json")
                        .read_text())
    result["rerank"] = {k: {"retriever": v["retriever_metrics"], "rerank": v["rerank_metrics"]}
                        for k, v in rerank.items()}
    result["rerank_rankings"] = {p.name: parquet_digests(p)
                                 for p in sorted(work.glob("rerank.*.parquet"))}
    return result


def diff(a: dict, b: dict, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{where}/{k}: only in {'second' if k not in a else 'first'}")
            else:
                out += diff(a[k], b[k], f"{where}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in diff(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, help="scratch folder (deleted first)")
    ap.add_argument("--out", type=Path, help="the fingerprint JSON to write")
    ap.add_argument("--diff", nargs=2, type=Path, metavar=("A", "B"),
                    help="compare two fingerprints; exit 1 when they differ")
    args = ap.parse_args(argv)
    if args.diff:
        found = diff(*(json.loads(p.read_text()) for p in args.diff))
        for line in found:
            print(line)
        print("identical" if not found else f"{len(found)} difference(s)")
        return 1 if found else 0
    if not (args.work and args.out):
        ap.error("--work and --out (or --diff A B)")
    args.out.write_text(json.dumps(fingerprint(args.work.resolve()), indent=1, sort_keys=True))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
