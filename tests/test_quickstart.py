"""The main job's plumbing end to end on a small synthetic world (the full-size run is the
README's first command)."""

import json

from gensr.quickstart import quickstart_config, run_quickstart


def test_quickstart_config_is_packaged():
    assert quickstart_config().exists()


def test_quickstart_end_to_end_and_reuse(tmp_path, capsys):
    out = tmp_path / "qs"
    kwargs = dict(max_steps=30, synthetic={"n_users": 150, "n_items": 200, "seed": 3},
                  cf_options={"epochs": 2, "min_epochs": 1})
    results = run_quickstart(out, device="cpu", **kwargs)
    assert set(results) == {"random", "pop", "bm25", "gensr"}
    assert set(results["gensr"]) == {"rec", "src"} and "rec" not in results["bm25"]
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"]["gensr"]["src"]["R@5"] == results["gensr"]["src"]["R@5"]
    assert "| Search | R@5 |" in (out / "results.md").read_text()
    assert (out / "gensr" / "metrics_test.json").exists()
    # a second call reuses every finished step and gives the same table
    again = run_quickstart(out, device="cpu", **kwargs)
    assert "reusing the finished run" in capsys.readouterr().out
    assert again["gensr"] == results["gensr"]
