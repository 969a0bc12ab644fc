"""``gensr compare``: the table writer, end to end on tiny data, reuse of finished runs,
resumption of interrupted ones, seeds, and errors at the boundary."""

from __future__ import annotations

import dataclasses
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

    monkeypatch.setattr("gensr.reuse.train_run", no_training)
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
    import gensr.reuse as reuse

    real = reuse.train_run
    monkeypatch.setattr(reuse, "train_run",  # interrupted after 5 of 10 steps
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


@pytest.mark.parametrize("max_instances, says", [
    (60, "A seeded subset (60 of the split's 300 instances"),
    (3000, "Every instance of the test split (300)"),  # larger than the split: all were used
])
def test_compare_md_says_what_was_evaluated(tmp_path, tiny_data_dir, max_instances, says):
    out = tmp_path / "o"
    compare(tiny_data_dir, "pop", out, max_instances=max_instances, progress=False, log=_quiet)
    md = (out / "compare.md").read_text()
    assert says in md
    assert ("seeded subset" in md) == (max_instances < 300)


# --- fairness: history windows, validation subset, seeds, significance, candidates ---------
QUICK = {"defaults": {"train": TINY_TRAIN},
         "models": {"sasrec": TINY["models"]["sasrec"], "tem": TINY["models"]["tem"]},
         "eval": {"max_instances": 120}}


def _doc(**top):
    return {**json.loads(json.dumps(QUICK)), **top}


def test_different_history_windows_are_refused_or_flagged(tmp_path, tiny_data_dir):
    doc = _doc()
    doc["models"]["sasrec"]["model"]["max_his_len"] = 10
    doc["models"]["tem"]["model"]["max_his_len"] = 6
    with pytest.raises(ConfigError, match=r"different history windows .*sasrec 10.*"
                                          r"history_window: N.*allow_different_windows"):
        compare(tiny_data_dir, "sasrec,tem,pop", tmp_path / "out",
                config_path=_yaml(tmp_path / "w.yaml", doc), log=_quiet)
    assert not (tmp_path / "out").exists()  # refused before anything trained
    # history_window does not override a model that sets its own max_his_len
    with pytest.raises(ConfigError, match="different history windows"):
        compare(tiny_data_dir, "sasrec,tem", tmp_path / "out", history_window=6,
                config_path=_yaml(tmp_path / "w.yaml", doc), log=_quiet)

    doc["allow_different_windows"] = True
    out = tmp_path / "flagged"
    report = compare(tiny_data_dir, "sasrec,tem,pop", out, progress=False, log=_quiet,
                     config_path=_yaml(tmp_path / "w.yaml", doc))
    assert report["windows_equal"] is False and set(report["windows"]) == {"sasrec", "tem"}
    assert report["windows"]["sasrec"]["interactions"] == 10
    assert report["models"]["tem"]["history_window"]["interactions"] == 6
    md = (out / "compare.md").read_text()
    assert "**Different history windows**" in md and "sasrec: 10 interactions" in md
    runs = {line.split("|")[1].strip(): line.split("|")[4].strip()
            for line in md.splitlines() if line.startswith(("| sasrec |", "| tem |", "| pop |"))}
    assert runs["sasrec"].startswith("10 (") and runs["tem"].startswith("6 (")
    assert runs["pop"] == "–"  # reads no history: outside the check


def test_one_window_for_all_and_the_events_it_holds(tmp_path, tiny_data_dir, tiny_data):
    out = tmp_path / "same"
    report = compare(tiny_data_dir, "sasrec,tem,bm25", out, history_window=5, progress=False,
                     config_path=_yaml(tmp_path / "q.yaml", _doc()), log=_quiet)
    assert report["windows_equal"] is True
    for name in ("sasrec", "tem"):
        run = json.loads((out / name / "seed0" / "run.json").read_text())
        assert run["model_config"]["max_his_len"] == 5
    table = compare_mod.evaluation_table(tiny_data, compare_mod.EvalSettings(max_instances=120))
    rows, events = tiny_data.sequences.window_counts(table.user, table.seq, 5)
    assert report["windows"]["sasrec"]["mean_events"] == pytest.approx(events.mean(), abs=0.01)
    assert rows.max() == 5 and events.max() <= 5
    assert "every model reads the last 5 interactions" in (out / "compare.md").read_text()


def test_window_events_count_twins_once(tmp_path):
    from gensr.data import load_data
    from gensr.data.prepare import prepare
    from test_adapter_atomic import _write_atomic

    raw = _write_atomic(tmp_path / "raw")  # every purchase: a rec row and a src twin
    data = load_data(prepare("amazon-atomic", raw, tmp_path / "d", n_negatives=10)[0])
    table = compare_mod.evaluation_table(data, compare_mod.EvalSettings())
    rows, events = data.sequences.window_counts(table.user, table.seq, 4)
    # test instances see 5 past purchases = 10 rows: 4 rows = 2 whole twin pairs
    test = table.seq == table.seq.max()
    assert (rows[test] == 4).all() and (events[test] == 2).all()
    rows, events = data.sequences.window_counts(table.user, table.seq, 3)
    assert (events[test] == 2).all()  # 3 rows: one pair and half of another
    rows, events = data.sequences.window_counts(table.user, table.seq, 100)
    assert (rows[test] == 10).all() and (events[test] == 5).all()


def test_seeds_list_paired_tests_and_marks(tmp_path, tiny_data_dir):
    import polars as pl
    from scipy import stats

    doc = _doc(seeds=[0, 2], history_window=6, significance={"reference": "sasrec"})
    out = tmp_path / "sig"
    report = compare(tiny_data_dir, "sasrec,pop,random", out, progress=False, log=_quiet,
                     config_path=_yaml(tmp_path / "s.yaml", doc))
    assert [r["seed"] for r in report["models"]["sasrec"]["runs"]] == [0, 2]
    assert [r["seed"] for r in report["models"]["random"]["runs"]] == [0, 2]
    assert len(report["models"]["pop"]["runs"]) == 1
    saved = json.loads((out / "compare.json").read_text())
    results = saved["significance"]["results"]
    assert set(results) == {"pop", "random"} and set(results["pop"]) == {"rec"}
    # the stored p-value is the paired t-test of the per-instance values (seed means)
    inst = pl.read_parquet(out / "compare_instances.parquet").filter(pl.col("task") == "rec")
    assert inst.height == report["eval"]["instances"]["rec"]
    runs = [json.loads((out / "sasrec" / f"seed{s}" / "compare_eval.json").read_text())
            for s in (0, 2)]
    seed_mean = np.mean([r["per_instance"]["N@10"] for r in runs], axis=0)
    np.testing.assert_allclose(inst["sasrec/N@10"].to_numpy(), seed_mean)
    for other in ("pop", "random"):
        expected = stats.ttest_rel(inst["sasrec/N@10"].to_numpy(),
                                   inst[f"{other}/N@10"].to_numpy())
        got = results[other]["rec"]["N@10"]
        assert got["p_value"] == pytest.approx(expected.pvalue)
        assert got["n"] == inst.height
    assert inst["sasrec/N@10"].is_not_null().all()
    # the seed-aware test sits beside it: two-level bootstrap with a 95% interval
    seed_aware = results["random"]["rec"]["N@10"]["seed_aware"]
    assert seed_aware["method"] == "two-level bootstrap"
    assert (seed_aware["n_seeds_a"], seed_aware["n_seeds_b"]) == (2, 2)
    assert seed_aware["ci_low"] <= seed_aware["diff"] <= seed_aware["ci_high"]
    assert results["pop"]["rec"]["N@10"]["seed_aware"]["n_seeds_b"] == 1
    # marks: † exactly on the cells whose seed-aware p < alpha
    md = (out / "compare.md").read_text()
    assert "## sasrec against each model" in md
    header = next(line for line in md.splitlines() if line.startswith("| task |"))
    names = [c.strip() for c in header.split("|")[3:-1]]
    for line in md.splitlines():
        if not line.startswith("| Recommendation |"):
            continue
        cells = dict(zip(names, (c.strip() for c in line.split("|")[3:-1])))
        metric = line.split("|")[2].strip()
        assert "†" not in cells["sasrec"]
        for other in ("pop", "random"):
            significant = results[other]["rec"][metric]["seed_aware"]["p_value"] < 0.05
            assert cells[other].endswith("†") == significant, (metric, other, cells)
    # bootstrap is a config choice; an unknown test is refused up front
    with pytest.raises(ConfigError, match="significance.test"):
        compare(tiny_data_dir, "sasrec,pop", tmp_path / "x", log=_quiet,
                config_path=_yaml(tmp_path / "b.yaml", _doc(significance={"test": "z"})))
    with pytest.raises(ConfigError, match="seeds lists a seed more than once"):
        compare(tiny_data_dir, "pop", tmp_path / "x", log=_quiet,
                config_path=_yaml(tmp_path / "b.yaml", _doc(seeds=[1, 1])))


def test_shared_validation_subset_and_runs_table(tmp_path, tiny_data_dir):
    doc = _doc(history_window=6, validation={"max_instances": 50, "seed": 3})
    with pytest.raises(ConfigError, match="defaults.train.eval_max_instances is set by "
                                          "validation"):
        compare(tiny_data_dir, "tem", tmp_path / "x", log=_quiet,
                config_path=_yaml(tmp_path / "v.yaml", doc))
    del doc["defaults"]["train"]["eval_max_instances"]
    out = tmp_path / "val"
    report = compare(tiny_data_dir, "sasrec,tem", out, progress=False, log=_quiet,
                     config_path=_yaml(tmp_path / "v.yaml", doc))
    runs = {n: json.loads((out / n / "seed0" / "run.json").read_text()) for n in ("sasrec", "tem")}
    for run in runs.values():
        cfg = run["train_config"]
        assert (cfg["eval_max_instances"], cfg["eval_fraction"], cfg["eval_seed"]) == (50, 1.0, 3)
        assert run["stop_reason"] == "max_steps"
    # sasrec validates on the rec part, tem on the search part of the same 50 instances
    assert runs["sasrec"]["valid_instances"] + runs["tem"]["valid_instances"] == 50
    assert report["validation"] == {"max_instances": 50, "seed": 3}
    md = (out / "compare.md").read_text()
    assert "same validation subset: 50 valid instances" in md
    assert "| model | runs (seeds) | done | window | valid | epochs | steps (best) | stop |" in md
    row = next(line for line in md.splitlines() if line.startswith("| sasrec |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[4] == str(runs["sasrec"]["valid_instances"])
    assert cells[5] == f"{runs['sasrec']['epochs']:g}" and cells[7] == "max steps"
    bad = json.loads(json.dumps(doc))
    bad["models"]["tem"]["train"] = {"eval_seed": 10}
    with pytest.raises(ConfigError, match="models.tem.train.eval_seed is set by validation"):
        compare(tiny_data_dir, "tem", tmp_path / "x", log=_quiet,
                config_path=_yaml(tmp_path / "b.yaml", bad))


def test_candidate_strategies_side_by_side(tmp_path, tiny_data_dir):
    import shutil

    from gensr.data import load_data
    from gensr.data.candidates import write_candidates
    from gensr.errors import DataError

    data_dir = tmp_path / "data"
    shutil.copytree(tiny_data_dir, data_dir)
    config = _yaml(tmp_path / "c.yaml", _doc(history_window=6))
    out = tmp_path / "cmp"
    with pytest.raises(DataError, match="gensr data candidates .* --strategy bm25-hard"):
        compare(data_dir, "sasrec,bm25", out, config_path=config, candidates="bm25-hard",
                log=_quiet)
    assert not (out / "sasrec").exists()
    write_candidates(load_data(data_dir), "bm25-hard")
    uniform = compare(data_dir, "sasrec,bm25", out, config_path=config, progress=False,
                      log=_quiet)
    hard = compare(data_dir, "sasrec,bm25", out, config_path=config, progress=False,
                   log=_quiet, candidates="bm25-hard")
    assert (out / "compare.md").exists() and (out / "compare.bm25-hard.md").exists()
    assert (out / "sasrec" / "seed0" / "compare_eval.bm25-hard.json").exists()
    assert [r["action"] for r in hard["models"]["sasrec"]["runs"]] == ["reused"]
    assert json.loads((out / "compare.bm25-hard.json").read_text())["eval"]["candidates"] == \
        "bm25-hard"
    assert "(bm25-hard negatives)" in (out / "compare.bm25-hard.md").read_text()
    # rec instances keep the uniform candidates: the same numbers; search gets much harder
    assert hard["models"]["sasrec"]["mean"]["rec"] == uniform["models"]["sasrec"]["mean"]["rec"]
    assert hard["models"]["bm25"]["mean"]["src"]["N@10"] < \
        uniform["models"]["bm25"]["mean"]["src"]["N@10"] - 0.1
    # and a third call finds both evaluations cached
    again = compare(data_dir, "sasrec,bm25", out, config_path=config, progress=False,
                    log=_quiet)
    assert all(r["eval_cached"] for m in again["models"].values() for r in m["runs"])
    with pytest.raises(ConfigError, match="eval.candidates"):
        compare(data_dir, "bm25", out, candidates="hard", log=_quiet)


def test_committed_compare_configs(tmp_path):
    from pathlib import Path

    configs = Path(__file__).resolve().parents[1] / "configs"
    fair = compare_mod.load_compare_config(configs / "compare_fair_cpu.yaml")
    names = [*compare_mod.DEFAULT_MODELS, *fair.variants]
    plans = [compare_mod.plan_model(n, fair, tmp_path / "cf.safetensors") for n in names]
    assert compare_mod.check_windows(plans, allow=False)  # the same window, no override
    assert not fair.allow_different_windows and fair.seeds == [0, 1, 2]
    assert {p.window for p in plans if p.window is not None} == {10}
    by_name = {p.name: p for p in plans}
    paper = by_name["gensr-paper"].model_config
    assert by_name["gensr-paper"].kind == "gensr"
    assert (paper.candidate_text_len, paper.item_embedding, paper.behaviour_marker) == \
        (0, False, False)  # the paper's model: no lever
    recommended = by_name["gensr"].model_config
    assert recommended.candidate_text_len > 0 and recommended.item_embedding
    assert recommended.behaviour_marker and recommended.query_match
    # gensr-800: the recommended model at the ablation's budget; gensr-nomatch: without the
    # query_match lever; the 60-minute variant is the three-lever model it was measured on
    assert by_name["gensr-800"].model_config == recommended
    three = by_name["gensr-nomatch"].model_config
    assert three == dataclasses.replace(recommended, query_match=False)
    long = by_name["gensr-60min"]
    assert long.model_config == three
    assert long.train_config.time_budget_min == 60 and long.train_config.max_steps > 10_000
    hard = {"gensr-hard1": "gensr-nomatch", "gensr-hard2": "gensr-nomatch",
            "gensr-hard1-match": "gensr-800", "gensr": "gensr-nohard", "disc-hard": "disc",
            "tem-hard": "tem", "unisar-hard": "unisar"}
    # gensr-nohard: the recommended gensr without its hard negatives, at the same budget
    for name in set(fair.variants) - {"gensr-60min", "disc-long", "gensr-nohard"} - set(hard):
        assert by_name[name].train_values == by_name["gensr-800"].train_values, name
    # the hard-negative ablation rows: their base model with only train.hard_negatives changed
    for name, base in hard.items():
        assert by_name[name].kind == by_name[base].kind
        assert by_name[name].model_config == by_name[base].model_config
        ours, theirs = by_name[name].train_config, by_name[base].train_config
        assert ours.hard_negatives > 0 and theirs.hard_negatives == 0
        assert dataclasses.replace(ours, hard_negatives=0, seed=theirs.seed) == theirs
    # disc-long: disc's model with a longer time budget, beside gensr-60min
    assert by_name["disc-long"].kind == "disc"
    assert by_name["disc-long"].model_config == by_name["disc"].model_config
    assert by_name["disc-long"].train_config.time_budget_min > \
        by_name["disc"].train_config.time_budget_min
    for plan in plans:
        if plan.trainable:
            t = plan.train_config
            assert (t.eval_max_instances, t.eval_fraction, t.eval_seed) == (1000, 1.0, 0)
    gensr_train = next(p for p in plans if p.name == "gensr").train_config
    assert gensr_train.time_budget_min == 60  # the issue's cap, and more steps than the rows
    assert gensr_train.max_steps > by_name["gensr-800"].train_config.max_steps
    # gensr-hard1-match is the recommended gensr at the ablation's budget
    assert dataclasses.replace(by_name["gensr-hard1-match"].train_config,
                               max_steps=gensr_train.max_steps, eval_every=gensr_train.eval_every,
                               seed=gensr_train.seed) == gensr_train
    assert fair.significance.reference == "gensr" and fair.eval.candidates == "uniform"

    old = compare_mod.load_compare_config(configs / "compare_cpu.yaml")
    old_plans = [compare_mod.plan_model(n, old, None) for n in compare_mod.DEFAULT_MODELS]
    assert old.allow_different_windows
    assert compare_mod.check_windows(old_plans, allow=True) is False  # flagged, not refused
    with pytest.raises(ConfigError, match="different history windows"):
        compare_mod.check_windows(old_plans, allow=False)


def test_named_variants_are_columns_of_their_own(tmp_path, tiny_data_dir):
    """`models.NAME.type: MODEL`: a second configuration of a model (gensr-paper beside gensr),
    trained into OUT/NAME/seedS and tabulated as its own column."""
    doc = {**TINY, "models": {"sasrec": TINY["models"]["sasrec"],
                              "sasrec-wide": {"type": "sasrec",
                                              "model": {"hidden": 24, "n_layers": 1}}}}
    out = tmp_path / "cmp"
    report = compare(tiny_data_dir, "sasrec,sasrec-wide,pop", out,
                     config_path=_yaml(tmp_path / "v.yaml", doc), progress=False, log=_quiet)
    assert report["models"]["sasrec-wide"]["model"] == "sasrec"
    wide = json.loads((out / "sasrec-wide" / "seed0" / "run.json").read_text())
    assert wide["model"] == "sasrec" and wide["model_config"]["hidden"] == 24
    assert report["models"]["sasrec"]["runs"][0]["metrics"] != \
        report["models"]["sasrec-wide"]["runs"][0]["metrics"]
    header = next(line for line in (out / "compare.md").read_text().splitlines()
                  if line.startswith("| task"))
    assert "sasrec-wide" in header
    for bad, message in (({"sasrec-x": {"type": "nope"}}, "unknown model 'nope'"),
                         ({"pop": {"type": "sasrec"}}, "no model's own name"),
                         ({"a b": {"type": "sasrec"}}, "plain name")):
        with pytest.raises(ConfigError, match=message):
            compare(tiny_data_dir, "pop", tmp_path / "bad",
                    config_path=_yaml(tmp_path / "bad.yaml", {"models": bad}), log=_quiet)
    with pytest.raises(ConfigError, match="unknown model"):  # a variant needs its config
        compare(tiny_data_dir, "sasrec-wide", tmp_path / "bad", log=_quiet)


def test_a_model_entry_may_set_its_own_seeds(tmp_path, tiny_data_dir):
    doc = {**TINY, "seeds": [0, 1], "significance": {"reference": "sasrec"}, "models": {
        "sasrec": TINY["models"]["sasrec"],
        "sasrec-one": {"type": "sasrec", "seeds": [0], "model": {"hidden": 16, "n_layers": 1,
                                                                 "dropout": 0.3}}}}
    out = tmp_path / "cmp"
    report = compare(tiny_data_dir, "sasrec,sasrec-one", out,
                     config_path=_yaml(tmp_path / "s.yaml", doc), progress=False, log=_quiet)
    assert report["models"]["sasrec"]["seeds"] == [0, 1]
    assert report["models"]["sasrec-one"]["seeds"] == [0]
    assert not (out / "sasrec-one" / "seed1").exists()
    # a one-seed column: compare.md says that its † cannot rest on training seeds
    text = " ".join((out / "compare.md").read_text().split())
    assert "One training seed (sasrec-one)" in text
    again = compare(tiny_data_dir, "sasrec,sasrec-one", out, seeds=1,  # --seeds wins
                    config_path=_yaml(tmp_path / "s.yaml", doc), progress=False, log=_quiet)
    assert again["models"]["sasrec"]["seeds"] == [0]
    bad = {"models": {"sasrec": {"seeds": [0, 0]}}}
    with pytest.raises(ConfigError, match="more than once"):
        compare(tiny_data_dir, "sasrec", tmp_path / "b",
                config_path=_yaml(tmp_path / "b.yaml", bad), log=_quiet)
