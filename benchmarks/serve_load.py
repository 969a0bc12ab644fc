"""Load benchmark of ``gensr serve``: requests/s and p50/p99 latency, 100-candidate requests.

Starts ``gensr serve RUN_DIR`` on 127.0.0.1 (a free port; loopback only), rebuilds requests
from the run's test instances (history, 100 stored candidates and, for search, the query, in
original ids), then for each concurrency level keeps that many requests in flight (closed
loop) for a bounded number of requests and time. Prints one table and writes
``benchmarks/results/serve_load.json`` and ``.md``.

    python benchmarks/serve_load.py --run RUN_DIR            # any run: GenSR or a baseline
    python benchmarks/serve_load.py --make-run runs/bench     # build a scratch GenSR first

``--make-run`` prepares the embedded synthetic data and saves an *untrained* GenSR with a
small scratch T5 backbone (no CF view): the latency of the architecture at that size, not of
a useful model. Re-run with ``--run`` on a trained run (e.g. the quickstart's) for its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
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


def make_run(out: Path) -> Path:
    """Synthetic data + an untrained scratch GenSR saved as a run directory."""
    import torch

    from gensr.data import load_data
    from gensr.data.prepare import prepare
    from gensr.models.gensr import GenSR, GenSRConfig

    data_dir = out / "data"
    if not data_dir.exists():
        prepare("synthetic", None, data_dir)
    data = load_data(data_dir)
    run = out / "gensr-scratch"
    torch.manual_seed(0)
    config = GenSRConfig(backbone="scratch-t5", use_cf_view=False)  # scratch_* defaults
    model = GenSR(config, data)
    model.save_pretrained(run)
    (run / "run.json").write_text(json.dumps({"model": "gensr",
                                              "data_dir": str(data_dir.resolve())}))
    return run


def build_requests(run: Path, n: int, seed: int) -> tuple[list[dict], dict, object]:
    """Request bodies from the run's test instances (seeded sample), a model summary and
    the loaded (model, data) for the in-process reference."""
    from gensr.data.batching import eval_instances, seeded_subset
    from gensr.runs import load_run
    from gensr.serve.examples import instance_requests

    model, data = load_run(run, device="cpu")
    table = seeded_subset(eval_instances(data, "test", tasks=tuple(model.tasks)), n, seed)
    bodies = instance_requests(data, table, max_history=50)
    summary = {"model": model.name, "data": data.name, "fingerprint": data.fingerprint,
               "parameters": int(sum(p.numel() for p in model.parameters())),
               "max_his_len": int(model.config.max_his_len),
               "backbone": getattr(model.config, "backbone", None),
               "candidates_per_request": int(table.candidates.shape[1]),
               "search_share": float(np.mean(table.task == 1))}
    return bodies, summary, (model, data)


def in_process(loaded, bodies: list[dict], n_requests: int, max_seconds: float) -> dict:
    """The same requests through ``Ranker.rank`` one at a time, no HTTP: the model's share."""
    from gensr.serve import Ranker

    ranker = Ranker(*loaded)
    for body in bodies[:5]:
        ranker.rank_many([body])  # warm up
    latencies = []
    stop_at = time.perf_counter() + max_seconds
    start = time.perf_counter()
    for i in range(n_requests):
        if time.perf_counter() > stop_at:
            break
        t0 = time.perf_counter()
        ranker.rank_many([bodies[i % len(bodies)]])
        latencies.append(time.perf_counter() - t0)
    wall = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    return {"concurrency": "in-process", "requests": len(latencies), "errors": 0,
            "error_kinds": {}, "seconds": round(wall, 2),
            "requests_per_s": round(len(latencies) / wall, 2),
            "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p90_ms": round(float(np.percentile(lat, 90)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1), "mean_batch": 1.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(run: Path, args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-c", "from gensr.cli import main; main()", "serve", str(run),
           "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
           "--max-batch", str(args.max_batch), "--window-ms", str(args.window_ms),
           "--max-queue", str(args.max_queue), "--log-level", "warning",
           *(["--threads", str(args.threads)] if args.threads else [])]
    return launch_server(cmd, port, log, timeout=180)


def launch_server(cmd: list[str], port: int, log: Path, timeout: float
                  ) -> tuple[subprocess.Popen, str]:
    """Start ``cmd`` (a ``gensr serve`` on ``port``) with its output in ``log`` and wait until
    ``/healthz`` answers 200; exits with the log when the server dies or is not ready."""
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited:\n{log.read_text()}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"server not ready:\n{log.read_text()}")


async def load_level(url: str, bodies: list[dict], concurrency: int, n_requests: int,
                     max_seconds: float) -> dict:
    """``concurrency`` closed-loop clients until ``n_requests`` are done or time is up."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    stop_at = time.perf_counter() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        before = (await client.get("/healthz")).json()

        async def worker() -> None:
            nonlocal sent
            while sent < n_requests and time.perf_counter() < stop_at:
                body = bodies[sent % len(bodies)]
                sent += 1
                t0 = time.perf_counter()
                try:
                    resp = await client.post("/v1/rank", json=body)
                    ok = resp.status_code == 200 and len(resp.json()["ranking"]) == len(
                        body["candidates"])
                    key = None if ok else str(resp.status_code)
                except httpx.HTTPError as err:
                    key = type(err).__name__
                if key is None:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors[key] = errors.get(key, 0) + 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
        after = (await client.get("/healthz")).json()
    lat = np.array(latencies) * 1000 if latencies else np.zeros(1)
    batches = max(after["batches"] - before["batches"], 1)
    return {
        "concurrency": concurrency, "requests": len(latencies) + sum(errors.values()),
        "errors": sum(errors.values()), "error_kinds": errors, "seconds": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p90_ms": round(float(np.percentile(lat, 90)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "mean_batch": round((after["requests"] - before["requests"]) / batches, 2),
    }


def cpu_snapshot() -> dict:
    """Load average and the busiest other processes (to say whether the CPU was shared)."""
    out: dict = {"loadavg": [round(x, 2) for x in os.getloadavg()]}
    try:
        ps = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu"], capture_output=True,
                            text=True, timeout=5).stdout.splitlines()[1:6]
        out["top_processes"] = [" ".join(line.split()) for line in ps]
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, help="Run directory to serve.")
    ap.add_argument("--make-run", type=Path, help="Build a scratch GenSR run here first.")
    ap.add_argument("--concurrency", default="1,4,16", help="Comma-separated levels.")
    ap.add_argument("--requests", type=int, default=300, help="Requests per level (max).")
    ap.add_argument("--max-seconds", type=float, default=60, help="Time bound per level.")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--instances", type=int, default=200, help="Distinct request bodies.")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--window-ms", type=float, default=2.0)
    ap.add_argument("--max-queue", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of the server (and of the in-process row).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "serve_load.json")
    ap.add_argument("--note", default="", help="Free text stored with the results.")
    args = ap.parse_args()
    if (args.run is None) == (args.make_run is None):
        ap.error("give --run RUN_DIR or --make-run DIR")
    run = args.run if args.run is not None else make_run(args.make_run)
    bodies, summary, loaded = build_requests(run, args.instances, args.seed)
    levels = [int(x) for x in args.concurrency.split(",")]
    cpu_before = cpu_snapshot()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        proc, url = start_server(run, args, log)
        try:
            asyncio.run(load_level(url, bodies, 1, args.warmup, args.max_seconds))
            rows = [asyncio.run(load_level(url, bodies, c, args.requests, args.max_seconds))
                    for c in levels]
        finally:
            proc.send_signal(signal.SIGINT)
            code = proc.wait(30)
        server_log = log.read_text()
    # the model alone, after the server stopped (so the two never compete for the CPU)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rows.append(in_process(loaded, bodies, min(args.requests, 100), args.max_seconds))
    cpu_after = cpu_snapshot()

    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": str(run), "model": summary, "rows": rows,
        "settings": {k: getattr(args, k) for k in ("requests", "max_seconds", "warmup",
                                                   "instances", "max_batch", "window_ms",
                                                   "max_queue", "threads", "seed")},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "device": "cpu",
                    "client": "httpx.AsyncClient in the same machine, keep-alive"},
        "cpu_before": cpu_before, "cpu_after": cpu_after, "server_exit_code": code,
        "server_errors_logged": server_log.count("Traceback"), "note": args.note,
    }
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


HEAD = ("concurrency", "requests", "errors", "req/s", "p50 ms", "p90 ms", "p99 ms",
        "mean batch")


def _cells(row: dict) -> list[str]:
    return [str(row["concurrency"]), str(row["requests"]), str(row["errors"]),
            f"{row['requests_per_s']:.1f}", f"{row['p50_ms']:.0f}", f"{row['p90_ms']:.0f}",
            f"{row['p99_ms']:.0f}", f"{row['mean_batch']:.1f}"]


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    m = result["model"]
    table = Table(title=f"gensr serve: {m['model']} ({m['parameters']:,} params), "
                        f"{m['candidates_per_request']} candidates/request, "
                        f"{result['machine']['cpus']} CPUs")
    for h in HEAD:
        table.add_column(h, justify="right", no_wrap=True, min_width=len(h) if h != "concurrency"
                         else len("in-process"))
    for row in result["rows"]:
        table.add_row(*_cells(row))
    Console().print(table)
    print(f"load average before {result['cpu_before']['loadavg']} "
          f"after {result['cpu_after']['loadavg']}")


def markdown(result: dict) -> str:
    m, mach = result["model"], result["machine"]
    lines = [
        "# gensr serve: load benchmark",
        "",
        f"{result['date']}: `benchmarks/serve_load.py`, run `{result['run']}`.",
        f"Model **{m['model']}** ({m['parameters']:,} parameters, backbone "
        f"`{m['backbone']}`, max_his_len {m['max_his_len']}) on `{m['data']}` "
        f"({m['fingerprint']}); {m['candidates_per_request']} candidates per request, "
        f"{m['search_share']:.0%} search requests. Server and client on one machine: "
        f"{mach['cpus']} CPUs, torch {mach['torch']} on {mach['device']}, torch threads: "
        f"{mach['torch_threads']}. Closed loop: `concurrency` clients keep one request each "
        f"in flight; each level stops after {result['settings']['requests']} requests or "
        f"{result['settings']['max_seconds']:g} s, whichever comes first (after "
        f"{result['settings']['warmup']} warm-up requests); micro-batches of <= "
        f"{result['settings']['max_batch']} requests, window "
        f"{result['settings']['window_ms']} ms. `errors` counts any answer but 200 with the "
        "full ranking. The `in-process` row is the same requests through `Ranker.rank` one at "
        "a time without HTTP, after the server stopped (the model's own cost).",
        "",
        "| " + " | ".join(HEAD) + " |",
        "|" + "---:|" * len(HEAD),
    ]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in result["rows"]]
    lines += [
        "",
        f"Load average before {result['cpu_before']['loadavg']}, after "
        f"{result['cpu_after']['loadavg']} (1/5/15 min).",
    ]
    if result.get("note"):
        lines += ["", result["note"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
