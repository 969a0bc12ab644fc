"""The trainer: a tiny run learns, a killed run resumes exactly, configs and run dirs fail
clearly, and ``gensr train`` + ``gensr evaluate`` work end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gensr.errors import ConfigError, RunError
from gensr.models.baselines.sasrec import SASRec
from gensr.train import TrainConfig, build_configs, fit, train_run
from gensr.train.loop import make_optimizer, warmup_linear

SMALL = ["model.hidden=32", "model.n_layers=1", "model.max_his_len=20"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _quiet(_: str) -> None:
    pass


def _train(out, data_dir, *sets, **kwargs):
    return train_run(out, "sasrec", data_dir, sets=[*SMALL, "progress=false", *sets],
                     log=_quiet, **kwargs)


def test_tiny_run_learns(tmp_path, tiny_data_dir):
    run = _train(tmp_path / "run", tiny_data_dir, "max_steps=120", "eval_every=40",
                 "batch_size=64", "lr=3e-3", "warmup_steps=10", "metric=rec/N@10")
    losses = [h["train_loss"] for h in run.history]
    assert losses[-1] < losses[0] - 0.1, losses
    best = run.best_valid["rec"]
    assert best["R@10"] > 0.2 and best["N@10"] > 0.09, best  # random: R@10 0.1, N@10 ~0.045
    assert run.status == "finished" and run.steps == 120
    assert run.trained and run.data_dir == str(tiny_data_dir.resolve())
    assert run.train_config["max_steps"] == 120 and run.model_config["hidden"] == 32
    assert [h["step"] for h in run.history] == [40, 80, 120]
    out = tmp_path / "run"
    for name in ("model.json", "model.safetensors", "last/checkpoint.pt", "last/rng_0.pt"):
        assert (out / name).exists(), name
    assert any((out / "tb").iterdir())


def _weights(path):
    return {k: v for k, v in load_file(str(path)).items()}


def test_resume_mid_epoch_is_exact(tmp_path, tiny_data_dir, monkeypatch):
    """Ctrl-C after 13 steps (mid-epoch), --resume, and the run ends where an uninterrupted
    one does: same weights, same validation history (dropout 0.2 is on)."""
    sets = ["max_steps=50", "eval_every=9", "batch_size=64", "warmup_steps=5", "lr=3e-3",
            "patience=0"]
    full = _train(tmp_path / "full", tiny_data_dir, *sets)
    steps_per_epoch = full.steps_per_epoch
    assert 13 % steps_per_epoch != 0 and 50 > steps_per_epoch  # stops mid-epoch, then crosses

    calls = {"n": 0}
    real_loss = SASRec.loss

    def interrupting_loss(self, batch):
        calls["n"] += 1
        out = real_loss(self, batch)  # random draws happen, then the "Ctrl-C"
        if calls["n"] == 14:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(SASRec, "loss", interrupting_loss)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "cut", tiny_data_dir, *sets)
    monkeypatch.setattr(SASRec, "loss", real_loss)
    state = json.loads((tmp_path / "cut" / "last" / "state.json").read_text())
    assert (state["step"], state["epoch"], state["batch"]) == (13, 0, 13)
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["status"] == "interrupted"

    resumed = train_run(tmp_path / "cut", resume=True, log=_quiet)
    assert resumed.steps == 50 and resumed.status == "finished"
    assert [h["step"] for h in resumed.history] == [h["step"] for h in full.history]
    for a, b in zip(full.history, resumed.history):
        assert a["value"] == pytest.approx(b["value"], abs=1e-6)
    for name in ("model.safetensors", "last/checkpoint.pt"):
        if name.endswith(".pt"):
            wa = torch.load(tmp_path / "full" / name, weights_only=True)["model"]
            wb = torch.load(tmp_path / "cut" / name, weights_only=True)["model"]
        else:
            wa, wb = _weights(tmp_path / "full" / name), _weights(tmp_path / "cut" / name)
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def test_stop_hook_and_resume_with_more_epochs(tmp_path, tiny_data_dir):
    run = _train(tmp_path / "r", tiny_data_dir, "max_epochs=1", "batch_size=64",
                 stop_after_steps=5)
    assert run.status == "paused" and run.steps == 5
    run = train_run(tmp_path / "r", resume=True, sets=["train.max_epochs=2"], log=_quiet)
    assert run.status == "finished" and run.epochs == 2.0
    with pytest.raises(ConfigError, match="model settings"):
        train_run(tmp_path / "r", resume=True, sets=["model.hidden=8"], log=_quiet)


def test_wall_clock_budget_stops_training(tmp_path, tiny_data_dir):
    """train.time_budget_min stops after the step that used up the budget, validates once
    more and records why it stopped; the schedule still spans max_steps."""
    run = _train(tmp_path / "r", tiny_data_dir, "max_steps=500", "eval_every=100",
                 "batch_size=64", "time_budget_min=1e-6")
    assert run.steps == 1 and run.status == "finished", run.steps
    assert run.stop_reason == "time_budget" and run.total_steps == 500
    assert [h["step"] for h in run.history] == [1] and run.best_step == 1
    assert (tmp_path / "r" / "model.safetensors").exists()
    full = _train(tmp_path / "f", tiny_data_dir, "max_steps=3", "batch_size=64",
                  "time_budget_min=60")
    assert full.steps == 3 and full.stop_reason == "max_steps"


def test_settings_resolution(tmp_path):
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("model:\n  hidden: 48\n  n_heads: 4\ntrain:\n  lr: 0.01\n"
                         "  batch_size: 32\n")
    model_cfg, train_cfg = build_configs("sasrec", config_path=yaml_path,
                                         sets=["dropout=0.5", "train.lr=0.02", "max_steps=7"])
    assert (model_cfg.hidden, model_cfg.n_heads, model_cfg.dropout) == (48, 4, 0.5)
    assert (train_cfg.lr, train_cfg.batch_size, train_cfg.max_steps) == (0.02, 32, 7)
    with pytest.raises(ConfigError, match="unknown setting 'hiden'.*hidden.*batch_size"):
        build_configs("sasrec", sets=["hiden=3"])
    with pytest.raises(ConfigError, match="both a model and a train setting"):
        build_configs("random", sets=["seed=3"])  # RandomConfig.seed and TrainConfig.seed
    with pytest.raises(ConfigError, match="unknown setting 'model.nope'"):
        build_configs("sasrec", sets=["model.nope=1"])
    with pytest.raises(ConfigError, match="train.lr: expected a number"):
        build_configs("sasrec", sets=["lr=fast"])
    with pytest.raises(ConfigError, match="no cf_path"):
        build_configs("sasrec", cf_path=yaml_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: 1\n")
    with pytest.raises(ConfigError, match="unknown top-level"):
        build_configs("sasrec", config_path=bad)
    with pytest.raises(ConfigError, match="TASK/METRIC"):
        TrainConfig(metric="rec/HR@5")
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        TrainConfig(batch_size=0)


def test_example_config_is_valid():
    path = Path(__file__).resolve().parents[1] / "configs" / "sasrec.yaml"
    model_cfg, train_cfg = build_configs("sasrec", config_path=path)
    assert model_cfg.max_his_len == 50 and train_cfg.metric == "rec/N@10"


def test_fit_refuses_metric_of_unserved_task(tmp_path, tiny_data):
    from gensr.models.baselines.sasrec import SASRecConfig

    model = SASRec(SASRecConfig(hidden=8, n_layers=1), tiny_data)
    with pytest.raises(ConfigError, match="serves only"):
        fit(model, tiny_data, TrainConfig(metric="src/R@5", progress=False), tmp_path / "x")


def test_existing_run_dir_needs_resume(tmp_path, tiny_data_dir):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("x")
    with pytest.raises(RunError, match="--resume"):
        _train(out, tiny_data_dir)
    with pytest.raises(RunError, match="no checkpoint to resume"):
        train_run(out, resume=True, log=_quiet)


def test_warmup_then_linear_decay():
    f = warmup_linear(4, 14)
    assert [round(f(s), 2) for s in (0, 3, 4, 9, 14)] == [0.2, 0.8, 1.0, 0.5, 0.0]


def _adamw_trajectory(optimizer_of, steps: int = 5) -> list[torch.Tensor]:
    """The weights of a small linear model after each of ``steps`` AdamW steps (fixed data)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 3)
    groups = [{"params": [model.weight], "weight_decay": 0.1},
              {"params": [model.bias], "weight_decay": 0.0}]
    optimizer = optimizer_of(groups)
    x, y = torch.randn(32, 8), torch.randn(32, 3)
    out = []
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        out.append(model.weight.detach().clone())
    return out


def test_make_optimizer_fuses_adamw_and_matches_the_plain_update():
    fused = make_optimizer([{"params": [torch.nn.Parameter(torch.ones(2))]}], 1e-3)
    has_cpu_fused = tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4)
    assert fused.defaults["fused"] is (True if has_cpu_fused else None)
    plain = _adamw_trajectory(lambda g: torch.optim.AdamW(g, lr=1e-2))
    made = _adamw_trajectory(lambda g: make_optimizer(g, 1e-2))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, made))
    assert not torch.equal(plain[0], plain[-1])  # the steps moved the weights


def test_make_optimizer_falls_back_where_torch_has_no_fused_kernel(monkeypatch):
    real = torch.optim.AdamW

    def no_fused(params, lr, fused=None):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point "
                               "Tensors of supported devices")
        return real(params, lr=lr)

    monkeypatch.setattr(torch.optim, "AdamW", no_fused)
    optimizer = make_optimizer([{"params": [torch.nn.Parameter(torch.ones(2))]}], 1e-3)
    assert isinstance(optimizer, real) and not optimizer.defaults["fused"]


def _gensr(capsys, *args: str) -> tuple[int, str]:
    """Run the ``gensr`` entry point in this process: (exit code, printed output)."""
    from gensr.cli import main

    capsys.readouterr()
    old_argv = sys.argv
    sys.argv = ["gensr", *args]
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    finally:
        sys.argv = old_argv
    return code, capsys.readouterr().out


def test_cli_train_then_evaluate(tmp_path, tiny_data_dir, capsys):
    out = tmp_path / "run"
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  hidden: 32\n  n_layers: 1\ntrain:\n  max_steps: 30\n"
                      "  eval_every: 15\n  progress: false\n")
    code, text = _gensr(capsys, "train", "--model", "sasrec", "--data", str(tiny_data_dir),
                        "--out", str(out), "--config", str(config), "--set", "batch_size=64")
    assert code == 0, text
    assert "best mean/N@10" in text
    code, text = _gensr(capsys, "evaluate", str(out), "--split", "test")
    assert code == 0, text
    metrics = json.loads((out / "metrics_test.json").read_text())
    assert set(metrics) == {"rec"}
    assert {"R@5", "N@5", "R@10", "N@10", "n"} <= set(metrics["rec"])

    # the same directory again without --resume: one-line error, exit code 2
    code, text = _gensr(capsys, "train", "--model", "sasrec", "--data", str(tiny_data_dir),
                        "--out", str(out))
    assert code == 2 and "--resume" in text and "Traceback" not in text
    code, text = _gensr(capsys, "train", "--model", "sasrec", "--data", str(tiny_data_dir),
                        "--out", str(tmp_path / "new"), "--set", "lerning_rate=1")
    assert code == 2 and "unknown setting 'lerning_rate'" in text and "Traceback" not in text


def test_cli_train_subprocess_error():
    """The installed entry point, as a user runs it: a bad setting is a one-line error."""
    res = subprocess.run([sys.executable, "-c", "from gensr.cli import main; main()", "train",
                          "--model", "sasrec", "--data", "x", "--out", "y", "--set", "hiden=1"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "unknown setting 'hiden'" in res.stdout
    assert "Traceback" not in res.stderr


def test_untrainable_model_writes_run_dir(tmp_path, tiny_data_dir):
    from gensr.eval.runner import evaluate_run

    run = train_run(tmp_path / "pop", "pop", tiny_data_dir, log=_quiet)
    assert run.trained is False
    metrics = evaluate_run(run_dir=tmp_path / "pop", model=None, data=None, split="test")
    assert set(metrics) == {"rec", "src"}
    assert (tmp_path / "pop" / "metrics_test.json").exists()


def test_train_help():
    from typer.testing import CliRunner

    from gensr.cli import app

    result = CliRunner().invoke(app, ["train", "--help"])
    assert result.exit_code == 0 and "--resume" in result.output and "--set" in result.output


@pytest.mark.parametrize("sets, reason, status", [
    (["max_steps=6", "eval_every=3"], "max_steps", "finished"),
    (["max_epochs=1", "batch_size=512"], "max_epochs", "finished"),
    (["max_steps=40", "eval_every=2", "lr=0", "patience=1"], "early_stop", "early_stopped"),
    (["max_steps=40", "eval_every=50", "time_budget_min=0.00001"], "time_budget", "finished"),
])
def test_run_json_records_why_training_stopped(tmp_path, tiny_data_dir, sets, reason, status):
    from gensr.runs import RunInfo

    run = _train(tmp_path / "r", tiny_data_dir, "batch_size=64", *sets)
    assert run.stop_reason == reason and run.status == status
    if reason == "early_stop":  # lr 0: no validation improves on the first one
        assert run.steps == 4 and run.best_step == 2
    if reason == "time_budget":  # stopped at once, and validated where it stopped
        assert run.steps <= 1 < run.total_steps
        assert run.history[-1]["step"] == run.steps == run.best_step
    if reason == "max_epochs":
        assert run.epochs == 1.0
    # runs written before stop_reason existed: inferred from status and step counts
    old = RunInfo.from_dict({k: v for k, v in run.to_dict().items() if k != "stop_reason"})
    assert old.why_stopped == ("max_epochs" if reason == "time_budget" else reason)


def test_validation_subset_is_shared_across_tasks_and_seeds(tiny_data):
    from gensr.train.loop import valid_subset

    def keys(table):
        return set(zip(table.user.tolist(), table.seq.tolist(), table.task.tolist()))

    both = valid_subset(tiny_data, ("rec", "src"), TrainConfig(eval_max_instances=60,
                                                                eval_fraction=1.0, eval_seed=4))
    rec = valid_subset(tiny_data, ("rec",), TrainConfig(eval_max_instances=60,
                                                        eval_fraction=1.0, eval_seed=4, seed=9))
    src = valid_subset(tiny_data, ("src",), TrainConfig(eval_max_instances=60,
                                                        eval_fraction=1.0, eval_seed=4, seed=1))
    assert len(both) == 60 and len(rec) + len(src) == 60
    assert keys(rec) | keys(src) == keys(both) and not keys(rec) & keys(src)
    assert set(rec.task.tolist()) == {0} and set(src.task.tolist()) == {1}
    # without eval_seed the run's seed picks the subset (the behaviour before eval_seed)
    other = valid_subset(tiny_data, ("rec", "src"), TrainConfig(eval_max_instances=60, seed=9))
    assert keys(other) != keys(both)
    with pytest.raises(ConfigError, match="time_budget_min"):
        TrainConfig(time_budget_min=0)
