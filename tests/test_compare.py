"""``gensr compare``: the table writer, end to end on tiny data, reuse of finished runs,
resumption of interrupted ones, seeds, and errors at the boundary."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import gensr.compare as compare_mod
from gensr.cli import app
from gensr.compare import compare
from gensr.errors import ConfigError
from gensr.eval.tables import to_markdown

TINY_TRAIN = {"max_steps": 10, "batch_size": 32, "eval_every": 5, "eval_max_instances": 40,
              "warmup_steps": 2, "lr": 3e-3, "progress": False, "log_every": 5}
SCRATCH = {"backbone": "scratch-t5", "scratch_d_model": 16, "scratch_vocab_size": 400,
           "item_text_tokens": 4}
TINY = {
    "defaults": {"train": TINY_TRAIN},
    "models": {
        "gensr": {"model": {**SCRATCH, "scratch_heads": 2, "scratch_d_ff": 32,
                            "scratch_layers": 1,
                            "rec_template": "rec {cf_history} {sem_history} {cf_candidate} "
                                            "{sem_candidate}",
                            "src_template": "src {query} {cf_history} {sem_history} "
                                            "{cf_candidate} {sem_candidate}"}},
        "disc": {"model": {**SCRATCH, "encoder_layers": 1, "encoder_heads": 2,
                           "encoder_ff": 32}},
        "unisar": {"model": {"hidden": 16, "id_dim": 8, "word_dim": 8}},
        "sasrec": {"model": {"hidden": 16, "n_layers": 1}},
        "tem": {"model": {"hidden": 16}},
    },
    "history_window": 6,  # every model reads the same 6 interactions
    "eval": {"max_instances": 120},
    "cf": {"epochs": 2, "min_epochs": 1, "dim": 8},
}
ALL = "gensr,unisar,sasrec,tem,disc,pop,bm25"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _yaml(path, doc) -> str:
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _quiet(_: str) -> None:
    pass


# --- the table writer --------------------------------------------------------------------
def test_table_bolds_the_best_and_dashes_missing_tasks():
    results = {
        "gensr": {"rec": {"R@5": 0.5, "N@5": 0.3}, "src": {"R@5": (0.9, 0.01), "N@5": 0.7}},
        "sasrec": {"rec": {"R@5": 0.6, "N@5": 0.3}},  # no search: "–"
        "tem": {"src": {"R@5": (0.8, 0.02), "N@5": 0.8}},
    }
    lines = to_markdown(results, metrics=("R@5", "N@5")).splitlines()
    assert lines[0] == "| task | metric | gensr | sasrec | tem |"
    rows = {(cells[1], cells[2]): cells[3:6] for cells in
            ([c.strip() for c in line.split("|")] for line in lines[2:])}
    assert rows[("Recommendation", "R@5")] == ["0.5000", "**0.6000**", "–"]
    assert rows[("Recommendation", "N@5")] == ["**0.3000**", "**0.3000**", "–"]  # tie: both
    assert rows[("Search", "R@5")] == ["**0.9000 ± 0.0100**", "–", "0.8000 ± 0.0200"]
    assert rows[("Search", "N@5")] == ["0.7000", "–", "**0.8000**"]


# --- end to end ----------------------------------------------------------------------------
def test_compare_end_to_end_then_reuses_everything(tmp_path, tiny_data_dir, monkeypatch):
    config = _yaml(tmp_path / "tiny.yaml", TINY)
    out = tmp_path / "cmp"
    first = compare(tiny_data_dir, ALL, out, config_path=config, progress=False, log=_quiet)

    md = (out / "compare.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| task |"))
    assert header == f"| task | metric | {' | '.join(ALL.split(','))} |"
    rows = [line for line in md.splitlines() if line.startswith(("| Recommendation",
                                                                "| Search"))]
    assert len(rows) == 8 and all("**" in row for row in rows)
    cells = {row.split("|")[1].strip() + row.split("|")[2].strip(): row.split("|")[3:-1]
             for row in rows}
    names = ALL.split(",")
    for key, values in cells.items():
        by_model = dict(zip(names, (v.strip() for v in values)))
        if key.startswith("Recommendation"):
            assert by_model["tem"] == "–" and by_model["bm25"] == "–"
        else:
            assert by_model["sasrec"] == "–"
            assert by_model["gensr"] != "–" and by_model["unisar"] != "–"

    report = json.loads((out / "compare.json").read_text())
    assert report["data"]["fingerprint"] == first["data"]["fingerprint"]
    assert report["seeds"] == [0] and report["cf"]["pretrained_here"]
    assert (out / "cf.safetensors").exists()
    for name in names:
        (run,) = report["models"][name]["runs"]
        assert run["run_dir"] == str(out / name / "seed0")
        assert run["action"] == ("built" if name in ("pop", "bm25") else "trained")
        assert run["eval_time_s"] >= 0 and set(run["metrics"]) == set(
            report["models"][name]["tasks"])
        if name not in ("pop", "bm25"):
            assert run["train_time_s"] > 0 and run["steps"] == 10
    # the same instances for every model: counts per task agree with the eval subset
    n = report["eval"]["instances"]
    assert sum(n.values()) == 120
    assert report["models"]["tem"]["runs"][0]["metrics"]["src"]["n"] == n["src"]
    assert report["models"]["sasrec"]["runs"][0]["metrics"]["rec"]["n"] == n["rec"]

    # a second call trains nothing (and finds its evaluations cached)
    def no_training(*args, **kwargs):
        raise AssertionError("compare retrained a finished run")

    monkeypatch.setattr(compare_mod, "train_run", no_training)
    again = compare(tiny_data_dir, ALL, out, config_path=config, progress=False, log=_quiet)
    for name in names:
        (run,) = again["models"][name]["runs"]
        assert run["action"] == "reused" and run["eval_cached"]
        assert run["metrics"] == first["models"][name]["runs"][0]["metrics"]

    # changed settings are refused, not silently reused
    changed = json.loads(json.dumps(TINY))
    changed["defaults"]["train"]["max_steps"] = 12
    with pytest.raises(ConfigError, match="train.max_steps"):
        compare(tiny_data_dir, "sasrec", out, config_path=_yaml(tmp_path / "c.yaml", changed),
                progress=False, log=_quiet)


def test_compare_resumes_an_interrupted_run(tmp_path, tiny_data_dir, monkeypatch):
    config = _yaml(tmp_path / "tiny.yaml", {**TINY, "models": {"sasrec": TINY["models"]["sasrec"]}})
    out = tmp_path / "cmp"
    real = compare_mod.train_run
    monkeypatch.setattr(compare_mod, "train_run",  # interrupted after 5 of 10 steps
                        lambda *a, **k: real(*a, **{**k, "stop_after_steps": 5}))
    first = compare(tiny_data_dir, "sasrec", out, config_path=config, progress=False,
                    log=_quiet)
    assert first["models"]["sasrec"]["runs"][0]["steps"] == 5
    monkeypatch.undo()
    report = compare(tiny_data_dir, "sasrec", out, config_path=config, progress=False,
                     log=_quiet)
    (run,) = report["models"]["sasrec"]["runs"]
    assert run["action"] == "resumed" and run["steps"] == 10 and run["status"] == "finished"
    assert not run["eval_cached"]  # a new best model: evaluated again


def test_two_seeds_give_mean_and_std(tmp_path, tiny_data_dir):
    doc = {**TINY, "models": {"sasrec": TINY["models"]["sasrec"]}}
    out = tmp_path / "cmp"
    report = compare(tiny_data_dir, "sasrec,pop,random", out,
                     config_path=_yaml(tmp_path / "t.yaml", doc), seeds=2, progress=False,
                     log=_quiet)
    sasrec = report["models"]["sasrec"]
    assert [r["seed"] for r in sasrec["runs"]] == [0, 1]
    assert (out / "sasrec" / "seed1" / "run.json").exists()
    assert len(report["models"]["pop"]["runs"]) == 1  # deterministic: runs once
    assert [r["seed"] for r in report["models"]["random"]["runs"]] == [0, 1]
    values = [r["metrics"]["rec"]["N@10"] for r in sasrec["runs"]]
    assert sasrec["mean"]["rec"]["N@10"] == pytest.approx(np.mean(values))
    assert sasrec["std"]["rec"]["N@10"] == pytest.approx(np.std(values, ddof=1))
    md = (out / "compare.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| Recommendation | N@10"))
    assert row.count("±") == 2  # sasrec and random; pop is a single value
    assert "Mean ± sample standard deviation" in md
    assert json.loads((out / "compare.json").read_text())["n_seeds"] == 2


# --- errors at the boundary ------------------------------------------------------------------
@pytest.mark.parametrize("doc, message", [
    ({"model": {}}, "unknown top-level key"),
    ({"models": {"nope": {}}}, "models.nope: unknown model"),
    ({"defaults": {"model": {"hidden": 8}}}, "defaults takes only 'train:'"),
    ({"models": {"sasrec": {"modle": {}}}}, "unknown key"),
    ({"models": {"sasrec": {"model": {"hiden": 8}}}},
     "unknown setting 'models.sasrec.model.hiden'"),
    ({"eval": {"ties": "lucky"}}, "eval.ties"),
])
def test_config_errors_name_the_problem(tmp_path, tiny_data_dir, doc, message):
    with pytest.raises(ConfigError, match=message):
        compare(tiny_data_dir, "sasrec,pop", tmp_path / "out",
                config_path=_yaml(tmp_path / "bad.yaml", doc), log=_quiet)
    assert not (tmp_path / "out" / "sasrec").exists()  # nothing trained before the error


def test_unknown_model_is_a_one_line_cli_error(tmp_path, tiny_data_dir):
    res = subprocess.run([sys.executable, "-c", "from gensr.cli import main; main()",
                          "compare", "--data", str(tiny_data_dir), "--out", str(tmp_path / "o"),
                          "--models", "gensr,nope"], capture_output=True, text=True)
    assert res.returncode == 2 and "unknown model(s) ['nope']" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr


def test_cli_compare_reference_scorers(tmp_path, tiny_data_dir):
    result = CliRunner().invoke(app, ["compare", "--data", str(tiny_data_dir), "--out",
                                      str(tmp_path / "o"), "--models", "pop,bm25",
                                      "--max-instances", "60", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "| Search | R@5 |" in result.output
    assert (tmp_path / "o" / "compare.md").exists()
