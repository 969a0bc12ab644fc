"""Full-catalogue ranking benchmark: retrieve, then let GenSR rerank; quality, evaluation time
and service latency, on the same test instances.

    python benchmarks/full_catalogue.py --gensr RUNS/gensr --sasrec RUNS/sasrec --tem RUNS/tem
    python benchmarks/full_catalogue.py --tiny --out /tmp/fc     # synthetic data, untrained

1. Quality (full catalogue, the test split, train+valid items masked, the target never): for
   recommendation the retrievers ``lightgcn`` (the GenSR run's CF table) and ``sasrec``
   (the SASRec run), for search ``bm25`` and ``tem`` (the TEM run): each alone, GenSR
   reranking each one's top N for every ``--rerank-n``, and the models that rank every item
   directly (SASRec, TEM, LightGCN, pop, BM25) under full ranking. Each row with its wall time
   over the test instances (``gensr evaluate --full [--retriever R --rerank-n N]``).
2. Latency: ``gensr serve GENSR_RUN`` with all four retrievers on loopback; requests rebuilt
   from the test instances (history, user, query) to ``POST /v1/recommend`` and
   ``/v1/search``, each naming its retriever, for every ``--rerank-n`` and ``--concurrency``
   (closed loop): client p50/p99 and the server's own retrieve/rerank milliseconds (medians),
   whose ratio at N = 100 is the issue's bound (retrieval < 10% of the rerank).

Writes ``OUT.json`` and ``OUT.md`` (default ``benchmarks/results/full_catalogue_scientific``).
Timings are only meaningful on a quiet machine: the result records the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import cpu_snapshot, free_port, launch_server  # noqa: E402

QUALITY_METRICS = ("R@5", "N@5", "R@10", "N@10", "R@20", "N@20")


# --- tiny mode: synthetic data and seeded untrained runs ----------------------------------
def make_tiny(root: Path) -> dict[str, Path]:
    """Synthetic data (300 users, 200 items), a LightGCN table, and untrained small GenSR,
    SASRec and TEM runs: the benchmark's mechanics, not meaningful figures."""
    import torch

    from gensr.cf import pretrain_cf
    from gensr.data import load_data
    from gensr.data.prepare import prepare
    from gensr.models.registry import model_class

    data_dir = root / "data"
    if not data_dir.exists():
        prepare("synthetic", None, data_dir, options={"n_users": 300, "n_items": 200,
                                                      "seed": 7})
    data = load_data(data_dir)
    cf = root / "cf.safetensors"
    if not cf.exists():
        pretrain_cf(data, cf, epochs=5, min_epochs=1, dim=16, progress=False)
    configs = {
        "gensr": {"backbone": "scratch-t5", "scratch_d_model": 16, "scratch_vocab_size": 400,
                  "max_his_len": 6, "item_text_tokens": 4, "scratch_heads": 2,
                  "scratch_d_ff": 32, "scratch_layers": 1, "scratch_decoder_layers": 1,
                  "cf_path": str(cf)},
        "sasrec": {"hidden": 16, "n_layers": 1, "max_his_len": 10},
        "tem": {"hidden": 16, "max_his_len": 10},
    }
    runs = {}
    for name, values in configs.items():
        run = root / "runs" / name
        if not (run / "model.json").exists():
            cls = model_class(name)
            torch.manual_seed(0)
            model = cls(cls.config_class(**values), data)
            model.save_pretrained(run)
            (run / "run.json").write_text(json.dumps({"model": name,
                                                      "data_dir": str(data_dir.resolve())}))
        runs[name] = run
    runs["cf"] = cf
    return runs


# --- quality and evaluation time ------------------------------------------------------------
def retriever_specs(runs: dict[str, Path]) -> dict[str, tuple[str, str]]:
    """name -> (task, spec) of the four retrievers."""
    return {"lightgcn": ("rec", f"lightgcn={runs['cf']}"),
            "sasrec": ("rec", f"sasrec={runs['sasrec']}"),
            "bm25": ("src", "bm25"),
            "tem": ("src", f"tem={runs['tem']}")}


def quality(runs: dict[str, Path], ns: list[int], max_instances: int | None, seed: int,
            device: str, batch_size: int, log) -> dict:
    """Rows of the quality table (see the module docstring), with their wall times."""
    from gensr.eval.protocol import evaluate_full, full_instances
    from gensr.eval.rerank import evaluate_rerank
    from gensr.models.baselines.lightgcn import LightGCNConfig, LightGCNScorer
    from gensr.models.baselines.reference import (
        BM25Config,
        BM25Scorer,
        PopularityConfig,
        PopularityScorer,
    )
    from gensr.retrieve import build_retriever
    from gensr.runs import load_run, prepare_inference

    gensr, data = load_run(runs["gensr"], device=device)
    prepare_inference(gensr)
    rows: list[dict] = []
    counts = {}
    for task in ("rec", "src"):
        table, _ = full_instances(data, "test", (task,), max_instances, seed)
        counts[task] = len(table)
    for name, (task, spec) in retriever_specs(runs).items():
        retriever = build_retriever(spec, data, run_dir=runs["gensr"], device=device)
        for n in ns:
            start = time.perf_counter()
            res = evaluate_rerank(gensr, retriever, data, "test", n=n, tasks=(task,),
                                  batch_size=batch_size, max_instances=max_instances,
                                  seed=seed, progress=False)
            wall = time.perf_counter() - start
            m_ret, m_rr = res.retriever[task], (res.rerank or {})[task]
            rows.append({"task": task, "system": f"{name} alone", "retriever": name, "n": n,
                         "metrics": m_ret, "seconds": res.seconds["retrieve"],
                         "instances": res.instances})
            rows.append({"task": task, "system": f"gensr ∘ {name}", "retriever": name,
                         "n": n, "metrics": m_rr, "seconds": round(wall, 3),
                         "stage_seconds": res.seconds, "instances": res.instances})
            k = min(10, n)
            log(f"{task} gensr ∘ {name}@{n}: R@{k} {m_rr[f'R@{k}']:.4f} (alone "
                f"{m_ret[f'R@{k}']:.4f}, ceiling R@{n} {m_ret[f'R@{n}']:.4f}) in {wall:.1f}s")
    full_models = {
        "sasrec": lambda: load_run(runs["sasrec"], data, device)[0],
        "tem": lambda: load_run(runs["tem"], data, device)[0],
        "lightgcn": lambda: LightGCNScorer(LightGCNConfig(cf_path=str(runs["cf"])), data),
        "pop": lambda: PopularityScorer(PopularityConfig(), data),
        "bm25": lambda: BM25Scorer(BM25Config(), data),
    }
    for name, build in full_models.items():
        model = build().to(device)
        for task in model.tasks:
            start = time.perf_counter()
            metrics = evaluate_full(model, data, "test", tasks=(task,), batch_size=batch_size,
                                    max_instances=max_instances, seed=seed, progress=False)
            wall = time.perf_counter() - start
            rows.append({"task": task, "system": f"{name} (full ranking)", "retriever": None,
                         "n": None, "metrics": metrics[task], "seconds": round(wall, 3),
                         "instances": metrics[task]["n"]})
            log(f"{task} {name} full: R@10 {metrics[task]['R@10']:.4f} in {wall:.1f}s")
    return {"rows": rows, "instances": counts, "data": data.name,
            "fingerprint": data.fingerprint, "gensr_parameters":
            int(sum(p.numel() for p in gensr.parameters()))}


# --- latency ---------------------------------------------------------------------------------
def request_bodies(runs: dict[str, Path], n: int, seed: int) -> dict[str, list[dict]]:
    """Full-catalogue request bodies from the test instances, per task."""
    from gensr.data import load_data
    from gensr.data.batching import eval_instances, seeded_subset
    from gensr.runs import read_run_info
    from gensr.serve.examples import instance_requests

    data = load_data(read_run_info(runs["gensr"])["data_dir"])
    out = {}
    for task in ("rec", "src"):
        table = seeded_subset(eval_instances(data, "test", tasks=(task,)), n, seed)
        bodies = instance_requests(data, table, max_history=50)
        for b in bodies:
            b.pop("candidates")
        out[task] = bodies
    return out


def start_server(runs: dict[str, Path], args: argparse.Namespace, log: Path
                 ) -> tuple[subprocess.Popen, str]:
    port = free_port()
    specs = [f"{task}:{spec}" for task, spec in retriever_specs(runs).values()]
    cmd = [sys.executable, "-c", "from gensr.cli import main; main()", "serve",
           str(runs["gensr"]), "--host", "127.0.0.1", "--port", str(port), "--device",
           args.device, "--log-level", "warning", "--max-batch", str(args.max_batch),
           *[x for s in specs for x in ("--retriever", s)],
           *(["--threads", str(args.threads)] if args.threads else [])]
    return launch_server(cmd, port, log, timeout=300)


async def load_level(url: str, path: str, bodies: list[dict], concurrency: int,
                     n_requests: int, max_seconds: float) -> dict:
    """``concurrency`` closed-loop clients for ``n_requests`` requests (or the time bound)."""
    latencies: list[float] = []
    stages: dict[str, list[float]] = {"retrieve": [], "rerank": [], "batch": []}
    errors: dict[str, int] = {}
    sent = 0
    stop_at = time.perf_counter() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            nonlocal sent
            while sent < n_requests and time.perf_counter() < stop_at:
                body = bodies[sent % len(bodies)]
                sent += 1
                t0 = time.perf_counter()
                try:
                    resp = await client.post(path, json=body)
                    key = None if resp.status_code == 200 else (
                        f"{resp.status_code} {resp.json().get('error', '')}")
                except httpx.HTTPError as err:
                    key = type(err).__name__
                if key is None:
                    latencies.append(time.perf_counter() - t0)
                    t = resp.json()["timings_ms"]
                    for k in stages:
                        stages[k].append(float(t[k]))
                else:
                    errors[key] = errors.get(key, 0) + 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    lat = np.array(latencies) * 1000 if latencies else np.zeros(1)

    def med(k: str) -> float:
        return round(float(np.median(stages[k])), 3) if stages[k] else float("nan")

    return {"concurrency": concurrency, "requests": len(latencies) + sum(errors.values()),
            "errors": sum(errors.values()), "error_kinds": errors,
            "seconds": round(wall, 2), "requests_per_s": round(len(latencies) / wall, 2),
            "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "retrieve_ms_p50": med("retrieve"), "rerank_ms_p50": med("rerank"),
            "mean_batch": round(float(np.mean(stages["batch"])), 2) if stages["batch"] else 0}


def latency(runs: dict[str, Path], args: argparse.Namespace, ns: list[int],
            levels: list[int], log) -> tuple[list[dict], dict]:
    bodies = request_bodies(runs, args.instances, args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        server_log = Path(tmp) / "server.log"
        proc, url = start_server(runs, args, server_log)
        try:
            for name, (task, _) in retriever_specs(runs).items():
                path = "/v1/recommend" if task == "rec" else "/v1/search"
                for n in ns:
                    reqs = [{**b, "retriever": name, "rerank_n": n,
                             "top_k": min(args.top_k, n)} for b in bodies[task]]
                    asyncio.run(load_level(url, path, reqs, 1, args.warmup, args.max_seconds))
                    for c in levels:
                        row = asyncio.run(load_level(url, path, reqs, c, args.requests,
                                                     args.max_seconds))
                        row.update({"task": task, "retriever": name, "rerank_n": n})
                        rows.append(row)
                        log(f"{path} {name} N={n} c={c}: p50 {row['p50_ms']} ms, p99 "
                            f"{row['p99_ms']} ms, retrieve {row['retrieve_ms_p50']} ms, "
                            f"rerank {row['rerank_ms_p50']} ms, errors {row['errors']}")
        finally:
            proc.send_signal(signal.SIGINT)
            code = proc.wait(60)
        text = server_log.read_text()
    return rows, {"server_exit_code": code, "server_errors_logged": text.count("Traceback")}


def retrieval_share(rows: list[dict], n: int = 100) -> list[dict]:
    """Retrieval time / rerank time (server medians, concurrency 1) per retriever at N = n."""
    out = []
    for row in rows:
        if row["rerank_n"] == n and row["concurrency"] == 1 and row["rerank_ms_p50"] > 0:
            share = row["retrieve_ms_p50"] / row["rerank_ms_p50"]
            out.append({"retriever": row["retriever"], "task": row["task"], "n": n,
                        "retrieve_ms": row["retrieve_ms_p50"], "rerank_ms": row["rerank_ms_p50"],
                        "ratio": round(share, 4), "under_10_percent": bool(share < 0.10)})
    return out


# --- output ----------------------------------------------------------------------------------
def markdown(result: dict) -> str:
    q = result["quality"]
    if q is None:  # --skip-quality: the latency table only
        lines = ["# Full-catalogue serving latency: retrieve, then GenSR reranks", "",
                 f"{result['date']}: `{result['command']}`. Runs: "
                 + ", ".join(f"{k} `{v}`" for k, v in result["runs"].items()) + ".", ""]
        return _latency_markdown(result, lines)
    lines = [
        f"# Full-catalogue ranking: retrieve, then GenSR reranks ({q['data']})",
        "",
        f"{result['date']}: `{result['command']}`.",
        f"Data `{q['data']}` ({q['fingerprint']}); test instances: {q['instances']['rec']:,} "
        f"rec, {q['instances']['src']:,} search (the same for every row"
        + (f"; a seeded subset of {result['settings']['max_instances']:,} instances of both "
           "tasks, each task keeping its own"
           if result["settings"]["max_instances"] else "") + "). Full catalogue: every item "
        "ranked, the user's train and valid items masked, the target never; a target the "
        "retriever missed ranks below its N (0 at every K <= N). `alone` = the retriever's own "
        "order of its N; `R@N` = the rerank's ceiling. `seconds` = wall time of the row's "
        "evaluation over those instances.",
        "",
    ]
    for task, title in (("rec", "Recommendation"), ("src", "Search")):
        rows = [r for r in q["rows"] if r["task"] == task]
        head = ["system", "N", *QUALITY_METRICS, "R@N", "seconds"]
        lines += [f"## {title}", "", "| " + " | ".join(head) + " |",
                  "|---|" + "---:|" * (len(head) - 1)]
        for r in rows:
            m = r["metrics"]
            ceiling = f"{m['R@' + str(r['n'])]:.4f}" if r["n"] else "–"
            lines.append("| " + " | ".join([r["system"], str(r["n"] or "all"),
                                            *[f"{m[k]:.4f}" if k in m else "–"
                                              for k in QUALITY_METRICS],
                                            ceiling, f"{r['seconds']:.1f}"]) + " |")
        lines.append("")
    return _latency_markdown(result, lines)


def _latency_markdown(result: dict, lines: list[str]) -> str:
    lat = result["latency"]
    head = ["endpoint", "retriever", "rerank_n", "concurrency", "requests", "errors",
            "req/s", "p50 ms", "p99 ms", "retrieve ms", "rerank ms", "mean batch"]
    lines += ["## Service latency", "",
              f"`gensr serve` on loopback ({result['machine']['device']}, torch threads "
              f"{result['machine']['torch_threads']}), top_k {result['settings']['top_k']}, "
              f"closed loop; each level {result['settings']['requests']} requests or "
              f"{result['settings']['max_seconds']:g} s after {result['settings']['warmup']} "
              "warm-up requests. `retrieve ms` / `rerank ms`: the server's medians for the "
              "micro-batch of each request.", "",
              "| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for r in lat["rows"]:
        path = "/v1/recommend" if r["task"] == "rec" else "/v1/search"
        lines.append("| " + " | ".join([
            path, r["retriever"], str(r["rerank_n"]), str(r["concurrency"]),
            str(r["requests"]), str(r["errors"]), f"{r['requests_per_s']:.1f}",
            f"{r['p50_ms']:.0f}", f"{r['p99_ms']:.0f}", f"{r['retrieve_ms_p50']:.2f}",
            f"{r['rerank_ms_p50']:.1f}", f"{r['mean_batch']:.1f}"]) + " |")
    lines += ["", "Retrieval against rerank at N = 100 (concurrency 1; the bound: < 10%):", ""]
    lines += [f"- {s['retriever']}: {s['retrieve_ms']:.2f} ms / {s['rerank_ms']:.1f} ms = "
              f"{100 * s['ratio']:.1f}% ({'under' if s['under_10_percent'] else 'NOT under'} "
              "10%)" for s in lat["retrieval_share"]] or ["- (no N = 100 level measured)"]
    lines += ["", f"Load average before {result['cpu_before']['loadavg']}, after "
              f"{result['cpu_after']['loadavg']} (1/5/15 min)."]
    if result.get("note"):
        lines += ["", result["note"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gensr", type=Path, help="The GenSR run (its run.json names the data).")
    ap.add_argument("--sasrec", type=Path, help="A SASRec run on the same data.")
    ap.add_argument("--tem", type=Path, help="A TEM run on the same data.")
    ap.add_argument("--cf", type=Path, help="CF table (default: the GenSR run's "
                    "cf.safetensors).")
    ap.add_argument("--tiny", action="store_true", help="Synthetic data and untrained small "
                    "runs, made in --out's folder (the suite's end-to-end check).")
    ap.add_argument("--rerank-n", default="50,100", help="Comma-separated N.")
    ap.add_argument("--concurrency", default="1,4", help="Comma-separated levels.")
    ap.add_argument("--max-instances", type=int, default=None, help="Seeded subset of test "
                    "instances per task for the quality table (default: all).")
    ap.add_argument("--requests", type=int, default=200, help="Requests per latency level.")
    ap.add_argument("--max-seconds", type=float, default=120, help="Time bound per level.")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--instances", type=int, default=200, help="Distinct request bodies per "
                    "task.")
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64, help="Instances per evaluation "
                    "batch.")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (server and "
                    "evaluation).")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-latency", action="store_true", help="Only the quality table.")
    ap.add_argument("--skip-quality", action="store_true", help="Only the latency table.")
    ap.add_argument("--out", type=Path, default=None, help="Output prefix (OUT.json, OUT.md; "
                    "default benchmarks/results/full_catalogue_scientific).")
    ap.add_argument("--note", default="", help="Free text stored with the results.")
    args = ap.parse_args()
    if args.tiny:
        if args.out is None:
            args.out = Path(tempfile.mkdtemp(prefix="gensr-fc-")) / "full_catalogue_tiny"
        runs = make_tiny(args.out.parent / "tiny")
    else:
        if not (args.gensr and args.sasrec and args.tem):
            ap.error("give --gensr, --sasrec and --tem runs (or --tiny)")
        cf = args.cf or args.gensr / "cf.safetensors"
        if not cf.is_file():
            ap.error(f"no CF table at {cf}: pass --cf")
        runs = {"gensr": args.gensr, "sasrec": args.sasrec, "tem": args.tem, "cf": cf}
        args.out = args.out or RESULTS / "full_catalogue_scientific"
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    ns = [int(x) for x in args.rerank_n.split(",")]
    levels = [int(x) for x in args.concurrency.split(",")]
    cpu_before = cpu_snapshot()
    q = None if args.skip_quality else quality(runs, ns, args.max_instances, args.seed,
                                               args.device, args.batch_size, log=print)
    lat_rows, server = ([], {}) if args.skip_latency else latency(runs, args, ns, levels, print)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/full_catalogue.py " + " ".join(sys.argv[1:]),
        "runs": {k: str(v) for k, v in runs.items()},
        "quality": q,
        "latency": {"rows": lat_rows, "retrieval_share": retrieval_share(lat_rows),
                    **server},
        "settings": {k: getattr(args, k) for k in ("rerank_n", "concurrency", "max_instances",
                                                   "requests", "max_seconds", "warmup",
                                                   "instances", "top_k", "max_batch",
                                                   "batch_size", "threads", "seed", "tiny")},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "device": args.device},
        "cpu_before": cpu_before, "cpu_after": cpu_snapshot(), "note": args.note,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = args.out.with_suffix(".json"), args.out.with_suffix(".md")
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    md_path.write_text(markdown(result))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
