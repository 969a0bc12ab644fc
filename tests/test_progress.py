"""Progress output in logs: a tqdm bar on a terminal, a plain line now and then elsewhere.

* the line mode's schedule (every 10 % and every 30 s, one closing line) with a fake clock;
* the choice of mode (terminal or not, ``GENSR_PROGRESS``, ``enabled=False``);
* ``gensr train`` with its output to a pipe writes lines and no carriage-return frames;
* ``compare(progress=False)`` trains without a bar (it used to print the training bars).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tqdm.auto import tqdm

import gensr.progress as progress_mod
from gensr.progress import LineProgress, progress, progress_mode


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(progress_mod.time, "monotonic", fake)
    return fake


@pytest.fixture
def lines_mode(monkeypatch):
    monkeypatch.setenv("GENSR_PROGRESS", "lines")


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_lines_at_every_tenth_and_a_closing_line(clock, lines_mode):
    out = io.StringIO()
    bar = progress(total=1000, desc="train gensr", file=out)
    assert isinstance(bar, LineProgress)
    for step in range(1000):
        clock.now += 0.1  # 100 s in all: a 10 % step every 10 s
        bar.update(1)
        if step % 100 == 0:
            bar.set_postfix(loss=f"{1 / (step + 1):.4f}")
    bar.close()
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 10, lines  # 10 %, 20 %, ..., 90 % and the closing line
    assert lines[0].startswith("train gensr: 10% (100/1000) in 10s, 10 it/s")
    assert [line.split(": ")[1].split("%")[0] for line in lines[:9]] == [
        str(p) for p in range(10, 100, 10)]
    assert lines[-1].startswith("train gensr: done 100% (1000/1000) in 1m40s")
    assert lines[-1].endswith("loss=0.0011")


def test_slow_loops_print_every_30_seconds_and_fast_ones_once(clock, lines_mode):
    out = io.StringIO()
    for _ in progress(range(4), desc="slow", file=out):  # 4 steps of 70 s
        clock.now += 70
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and lines[-1].startswith("slow: done 100% (4/4) in 4m40s")
    out = io.StringIO()
    for _ in progress(range(100_000), desc="fast", file=out):  # 0.1 s in all
        clock.now += 1e-6
    assert out.getvalue().splitlines() == ["fast: done 100% (100000/100000) in 0s, "
                                           "1e+06 it/s"]


def test_transient_bars_print_only_timed_lines(clock, lines_mode):
    out = io.StringIO()
    for _ in progress(range(50), desc="valid", leave=False, file=out):
        clock.now += 0.01  # a short inner loop: nothing at all
    assert out.getvalue() == ""
    bar = progress(total=None, desc="score", leave=False, file=out)
    for _ in range(100):  # 100 s, no total: a line every 30 s, then a closing one
        clock.now += 1
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert [line.split(" in ")[0] for line in lines] == ["score: 30", "score: 60",
                                                        "score: 90", "score: 100"]


def test_an_early_stop_says_how_far_it_got(clock, lines_mode):
    out = io.StringIO()
    bar = progress(range(1, 31), desc="lightgcn", file=out)
    for epoch in bar:
        clock.now += 2
        if epoch == 12:
            break
    bar.close()
    assert out.getvalue().splitlines()[-1].startswith("lightgcn: 37% (11/30) in 24s")


def test_the_mode_follows_the_stream_and_the_environment(monkeypatch):
    monkeypatch.delenv("GENSR_PROGRESS", raising=False)
    assert progress_mode(io.StringIO()) == "lines"
    assert progress_mode(TTY()) == "bars"
    assert isinstance(progress(total=3, file=TTY()), tqdm)
    assert isinstance(progress(total=3, file=io.StringIO()), LineProgress)
    for value, mode in [("lines", "lines"), ("bars", "bars"), ("off", "off"),
                        ("OFF ", "off"), ("nonsense", "lines"), ("", "lines")]:
        monkeypatch.setenv("GENSR_PROGRESS", value)
        assert progress_mode(io.StringIO()) == mode, value
    monkeypatch.setenv("GENSR_PROGRESS", "bars")
    out = TTY()
    for _ in progress(range(5), file=out, enabled=False):  # --no-progress wins over all
        pass
    assert out.getvalue() == ""
    monkeypatch.setenv("GENSR_PROGRESS", "off")
    out = io.StringIO()
    for _ in progress(range(5), file=out):
        pass
    assert out.getvalue() == ""


def test_every_progress_bar_goes_through_the_helper():
    src = Path(progress_mod.__file__).parent
    direct = [str(p.relative_to(src)) for p in src.rglob("*.py")
              if p.name != "progress.py" and "tqdm(" in p.read_text()]
    assert direct == []
    assert "rich.progress" not in "".join(p.read_text() for p in src.rglob("*.py"))


def test_train_to_a_pipe_writes_lines_not_frames(tmp_path, tiny_data_dir):
    env = {k: v for k, v in os.environ.items() if k != "GENSR_PROGRESS"}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-c", "from gensr.cli import main; main()", "train", "--model",
           "sasrec", "--data", str(tiny_data_dir), "--out", str(tmp_path / "run"),
           "--set", "model.hidden=16", "--set", "model.n_layers=1",
           "--set", "model.max_his_len=10", "--set", "max_steps=40", "--set", "eval_every=20",
           "--set", "eval_max_instances=40", "--set", "batch_size=32"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)  # pipes
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    both = res.stdout + res.stderr
    assert "\r" not in both
    assert "train sasrec: done 100% (40/40)" in res.stderr
    assert len(both) < 5000  # a tqdm bar in a pipe wrote a frame per refresh


def test_compare_without_progress_trains_without_a_bar(tmp_path, tiny_data_dir, capfd,
                                                        monkeypatch):
    from gensr.compare import compare

    monkeypatch.setenv("GENSR_PROGRESS", "bars")  # what a terminal would get
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "defaults": {"train": {"max_steps": 6, "batch_size": 32, "eval_every": 3,
                               "eval_max_instances": 30, "warmup_steps": 1}},
        "models": {"sasrec": {"model": {"hidden": 16, "n_layers": 1, "max_his_len": 10}}},
        "eval": {"max_instances": 40}}))
    compare(tiny_data_dir, "sasrec", tmp_path / "cmp", config_path=config, progress=False,
            log=lambda _: None)
    captured = capfd.readouterr()
    assert "train sasrec" not in captured.err + captured.out
    assert "\r" not in captured.err + captured.out
    info = json.loads((tmp_path / "cmp" / "sasrec" / "seed0" / "run.json").read_text())
    assert info["train_config"]["progress"] is False and info["steps"] == 6
    # and the same run with progress reuses it (progress only watches)
    report = compare(tiny_data_dir, "sasrec", tmp_path / "cmp", config_path=config,
                     progress=True, log=lambda _: None)
    assert report["models"]["sasrec"]["runs"][0]["action"] == "reused"
