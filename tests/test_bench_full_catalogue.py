"""benchmarks/full_catalogue.py --tiny end to end: quality rows, a live server's latency
rows, and the JSON/Markdown it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_full_catalogue_benchmark_tiny(tmp_path):
    out = tmp_path / "fc"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "full_catalogue.py"), "--tiny", "--out",
         str(out), "--rerank-n", "10,20", "--concurrency", "1,2", "--requests", "4",
         "--warmup", "1", "--instances", "4", "--max-instances", "40", "--threads", "1"],
        capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    rows = result["quality"]["rows"]
    systems = {(r["task"], r["system"], r["n"]) for r in rows}
    for task, names in (("rec", ("lightgcn", "sasrec")), ("src", ("bm25", "tem"))):
        for name in names:
            for n in (10, 20):
                assert (task, f"{name} alone", n) in systems
                assert (task, f"gensr ∘ {name}", n) in systems
    assert {s for t, s, n in systems if n is None} == {
        "sasrec (full ranking)", "tem (full ranking)", "lightgcn (full ranking)",
        "pop (full ranking)", "bm25 (full ranking)"}
    # the same instances everywhere; a retriever alone ranks its top N like full ranking
    # one seeded subset of 40 instances of both tasks, each task keeping its own
    counts = {t: {r["instances"] for r in rows if r["task"] == t} for t in ("rec", "src")}
    assert len(counts["rec"]) == len(counts["src"]) == 1
    assert sum(c.pop() for c in counts.values()) == 40
    full = {r["system"]: r["metrics"] for r in rows if r["task"] == "rec" and r["n"] is None}
    alone = next(r["metrics"] for r in rows if r["system"] == "lightgcn alone" and r["n"] == 20)
    assert abs(alone["R@10"] - full["lightgcn (full ranking)"]["R@10"]) < 1e-9
    lat = result["latency"]
    assert len(lat["rows"]) == 4 * 2 * 2 and all(r["errors"] == 0 for r in lat["rows"])
    assert all(r["p50_ms"] > 0 and r["retrieve_ms_p50"] > 0 for r in lat["rows"])
    assert lat["server_exit_code"] == 0 and lat["server_errors_logged"] == 0
    md = out.with_suffix(".md").read_text()
    assert "## Recommendation" in md and "## Search" in md and "## Service latency" in md
    assert "gensr ∘ tem" in md


def test_latency_only_markdown_names_the_share():
    """--skip-quality: the Markdown holds the latency table and the retrieval share only."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import full_catalogue as fc
    finally:
        sys.path.pop(0)
    row = {"task": "rec", "retriever": "sasrec", "rerank_n": 100, "concurrency": 1,
           "requests": 10, "errors": 0, "requests_per_s": 40.0, "p50_ms": 20.0, "p99_ms": 25.0,
           "retrieve_ms_p50": 1.2, "rerank_ms_p50": 16.0, "mean_batch": 1.0}
    result = {"quality": None, "date": "d", "command": "c", "runs": {"gensr": "g"},
              "latency": {"rows": [row], "retrieval_share": fc.retrieval_share([row])},
              "settings": {"top_k": 10, "requests": 10, "max_seconds": 5, "warmup": 1},
              "machine": {"device": "cpu", "torch_threads": 2},
              "cpu_before": {"loadavg": [0, 0, 0]}, "cpu_after": {"loadavg": [0, 0, 0]}}
    md = fc.markdown(result)
    assert "## Recommendation" not in md and "## Service latency" in md
    assert "sasrec: 1.20 ms / 16.0 ms = 7.5% (under 10%)" in md
