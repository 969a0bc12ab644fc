"""gensr analyze sweep / ablate (train per setting + evaluate) and the analyze command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from gensr.analysis import ABLATIONS, run_ablate, run_sweep
from gensr.cli import app
from gensr.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "analysis_gensr_tiny.yaml"
GRID = dict(config_path=TINY, sets=["eval_max_instances=10"], max_steps=2, max_instances=20,
            progress=False, log=lambda _: None)
runner = CliRunner()


def test_sweep_over_tau_and_reuse(tiny_data_dir, tiny_cf_path, tmp_path):
    out = tmp_path / "sweep"
    summary = run_sweep(tiny_data_dir, out, param="tau", values=[0.05, 0.5],
                        cf_path=tiny_cf_path, **GRID)
    rows = pl.read_csv(out / "sweep.csv")
    assert rows.height == 4 and sorted(set(rows["value"])) == [0.05, 0.5]
    assert set(rows["task"]) == {"rec", "src"}
    assert rows["R@5"].is_between(0, 1).all() and rows["N@5"].is_between(0, 1).all()
    for name in ("sweep.png", "sweep_runs.csv", "sweep.json"):
        assert (out / name).stat().st_size > 0
    card = json.loads((out / "runs" / "tau=0.05" / "seed0" / "model.json").read_text())
    assert card["config"]["tau"] == 0.05 and card["config"]["lam"] == 0.01
    assert summary["field"] == "model.tau"
    # a second call reuses the finished runs (same settings) and reproduces the numbers
    logs: list[str] = []
    again = run_sweep(tiny_data_dir, out, param="tau", values=[0.05, 0.5],
                      cf_path=tiny_cf_path, **{**GRID, "log": logs.append})
    assert sum("reusing" in line for line in logs) == 2
    assert again["results"] == summary["results"]
    # a run folder trained otherwise is refused, not overwritten (gensr.reuse: compare's rule)
    with pytest.raises(ConfigError, match="other settings"):
        run_sweep(tiny_data_dir, out, param="tau", values=[0.05], cf_path=tiny_cf_path,
                  **{**GRID, "max_steps": 3})


def test_sweep_rejects_unknown_parameters(tiny_data_dir, tmp_path):
    with pytest.raises(ConfigError, match="no setting"):
        run_sweep(tiny_data_dir, tmp_path, param="tau", values=[0.1], model_name="sasrec")
    with pytest.raises(ConfigError, match="no setting"):
        run_sweep(tiny_data_dir, tmp_path, param="temperature", values=[0.1])


def test_ablate_every_switch(tiny_data_dir, tiny_cf_path, tmp_path):
    out = tmp_path / "ablate"
    run_ablate(tiny_data_dir, out, cf_path=tiny_cf_path, **GRID)
    rows = pl.read_csv(out / "ablate.csv")
    assert rows["variant"].unique(maintain_order=True).to_list() == list(ABLATIONS)
    assert rows.height == 2 * len(ABLATIONS)
    assert (out / "ablate.png").stat().st_size > 0
    for variant, switches in ABLATIONS.items():
        config = json.loads((out / "runs" / variant / "seed0" / "model.json").read_text())
        for key, value in switches.items():
            assert config["config"][key] is value
    with pytest.raises(ConfigError, match="unknown ablation"):
        run_ablate(tiny_data_dir, out, variants=["no-views"])


# --- the command line -------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["mi", "grad-conflict", "space", "sweep", "ablate"])
def test_analyze_help(command):
    result = runner.invoke(app, ["analyze", command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def _gensr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from gensr.cli import main; main()", *args],
                          capture_output=True, text=True)


def test_analyze_errors_are_one_line(tmp_path, tiny_data_dir):
    res = _gensr("analyze", "mi", str(tmp_path / "nope"))
    assert res.returncode == 2 and "model.json missing" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr
    result = runner.invoke(app, ["analyze", "sweep", "--param", "tau", "--values", "a,b",
                                 "--data", str(tiny_data_dir)])
    assert isinstance(result.exception, ConfigError)
    assert "comma-separated numbers" in str(result.exception)
    result = runner.invoke(app, ["analyze", "grad-conflict", "--data", str(tiny_data_dir),
                                 "--model", "sasrec", "--steps", "1", "--out",
                                 str(tmp_path / "gc")])
    assert isinstance(result.exception, ConfigError)
    assert "does not serve" in str(result.exception)


def test_analyze_grad_conflict_command(tiny_data_dir, tiny_cf_path, tmp_path):
    out = tmp_path / "gc"
    result = runner.invoke(app, [
        "analyze", "grad-conflict", "--data", str(tiny_data_dir), "--model", f"gensr:{TINY}",
        "--cf", str(tiny_cf_path), "--steps", "3", "--batch-size", "12", "--no-progress",
        "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "share < 0" in result.output
    assert pl.read_csv(out / "grad_conflict.csv").height == 3
