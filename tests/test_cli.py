"""The command line: help on every command, one-line errors with exit code 2."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from gensr.cli import app

runner = CliRunner()
COMMANDS = [[], ["data"], ["data", "prepare"], ["data", "stats"], ["evaluate"], ["quickstart"]]


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def _gensr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from gensr.cli import main; main()", *args],
                          capture_output=True, text=True)


def test_bad_source_is_one_line_error(tmp_path):
    res = _gensr("data", "prepare", "nope", "--out", str(tmp_path / "x"))
    assert res.returncode == 2
    assert "unknown source 'nope'" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr


def test_missing_data_dir_error(tmp_path):
    res = _gensr("data", "stats", str(tmp_path / "missing"))
    assert res.returncode == 2 and "does not exist" in res.stdout


def test_prepare_and_stats(tmp_path):
    out = tmp_path / "syn"
    res = _gensr("data", "prepare", "synthetic", "--out", str(out), "--option", "n_users=120",
                 "--option", "n_items=150")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "interactions per split" in res.stdout
    res = _gensr("data", "stats", str(out))
    assert res.returncode == 0 and "test instances" in res.stdout
    res = _gensr("evaluate", "--model", "pop", "--data", str(out))
    assert res.returncode == 0 and "R@5" in res.stdout


def test_unknown_adapter_option_is_named(tmp_path):
    res = _gensr("data", "prepare", "synthetic", "--out", str(tmp_path / "x"), "--option",
                 "n_userz=3")
    assert res.returncode == 2
    assert "unknown --option n_userz" in res.stdout and "n_users" in res.stdout
