"""The CF view's LightGCN table: training, id alignment, fallback, loading checks, CLI."""

from __future__ import annotations

import inspect
import json

import numpy as np
import polars as pl
import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from gensr.cf import CFConfig, CFTable, card_path, pretrain_cf
from gensr.cf.graph import NegativeSampler, RecGraph
from gensr.cf.pretrain import expand_tables, fit_lightgcn
from gensr.data import load_data
from gensr.data.candidates import InteractedSet
from gensr.errors import ConfigError, RunError

FAST = {"epochs": 3, "min_epochs": 1, "progress": False}


@pytest.fixture(scope="module")
def cf_table(tiny_data, tmp_path_factory):
    """A table trained for a few epochs on the tiny data, with its card."""
    out = tmp_path_factory.mktemp("cf") / "cf.safetensors"
    card = pretrain_cf(tiny_data, out, **FAST)
    return out, card


def _blocks_graph() -> tuple[RecGraph, int, int]:
    """Three user groups; each group always buys the same two items (non-contiguous ids)."""
    users, items = [], []
    for group, pair in enumerate([(2, 7), (4, 9), (5, 11)]):
        for u in range(1 + 10 * group, 11 + 10 * group):
            users += [u, u]
            items += list(pair)
    return RecGraph.from_interactions(np.array(users), np.array(items)), 30, 12


def test_graph_is_deduplicated_and_normalised():
    g = RecGraph.from_interactions(np.array([1, 1, 1, 3]), np.array([5, 5, 8, 8]))
    assert g.user_ids.tolist() == [1, 3] and g.item_ids.tolist() == [5, 8]
    assert g.n_edges == 3  # the repeated (1, 5) counts once
    adj = g.normalized_adjacency().to_dense()
    assert torch.allclose(adj, adj.T)
    # user 1 (node 0) has degree 2, item 5 (node 2) degree 1
    assert adj[0, 2].item() == pytest.approx(1 / np.sqrt(2 * 1))
    assert adj[1, 2].item() == 0.0


def test_negatives_avoid_interacted_items():
    g = RecGraph.from_interactions(np.array([1, 1, 2]), np.array([1, 2, 3]))
    seen = InteractedSet(np.array([1, 1, 2]), np.array([1, 2, 3]), 3)
    neg = NegativeSampler(g, seen, np.random.default_rng(0)).sample(np.zeros(200, np.int64))
    assert set(g.item_ids[neg].tolist()) == {3}  # user 1 saw items 1 and 2


def test_cooccurring_items_are_closer_rows_align_and_padding_is_zero():
    graph, n_users, n_items = _blocks_graph()
    cfg = CFConfig(dim=16, epochs=40, batch_size=16, lr=0.05, weight_decay=1e-4, seed=0)
    fit = fit_lightgcn(graph, cfg, progress=False)
    item, user = expand_tables(graph, fit.user, fit.item, n_users, n_items)
    assert item.shape == (n_items + 1, 16) and user.shape == (n_users + 1, 16)
    assert item.dtype == torch.float32
    assert torch.count_nonzero(item[0]) == 0 and torch.count_nonzero(user[0]) == 0
    cos = torch.nn.functional.cosine_similarity
    # row i is item id i: 2 and 7 share their users, 4 and 9 theirs
    assert cos(item[2], item[7], dim=0) > cos(item[2], item[4], dim=0)
    assert cos(item[2], item[7], dim=0) > cos(item[2], item[11], dim=0)
    assert cos(item[4], item[9], dim=0) > cos(item[4], item[5], dim=0)
    # users score their own group's items above the others
    assert (user[1] @ item[2]) > (user[1] @ item[9])
    # ids never in the graph (1, 3, 6, 8, 10, 12) hold the fallback: the trained items' mean
    mean = fit.item.mean(0)
    for cold in (1, 3, 6, 8, 10, 12):
        assert torch.allclose(item[cold], mean)


def test_bpr_loss_decreases():
    graph, _, _ = _blocks_graph()
    fit = fit_lightgcn(graph, CFConfig(dim=16, epochs=15, batch_size=16, lr=0.05),
                       progress=False)
    losses = [row["bpr"] for row in fit.history]
    assert losses[-1] < 0.5 * losses[0]
    assert losses[0] < np.log(2) + 0.05  # a random start scores about log 2
    assert fit.best_epoch == fit.epochs_run == 15  # no validation: the last epoch is kept


def test_pretrain_writes_table_and_card(cf_table, tiny_data):
    out, card = cf_table
    assert out.is_file() and card_path(out).is_file() and card_path(out).suffix == ".json"
    assert not list(out.parent.glob(".*.tmp"))  # atomic writes leave no temporaries
    on_disk = json.loads(card_path(out).read_text())
    assert on_disk["data_fingerprint"] == tiny_data.fingerprint
    assert on_disk["dim"] == 64 and on_disk["layers"] == 2
    assert on_disk["valid"]["lightgcn"]["R@20"] > 0 and on_disk["valid"]["pop"]["R@20"] > 0
    assert len(on_disk["history"]) == on_disk["epochs_run"] <= 3
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["data_fingerprint"] == tiny_data.fingerprint
        assert set(f.keys()) == {"item", "user"}
    table = CFTable.load(out, tiny_data)
    assert table.dim == 64
    assert table.item.shape == (tiny_data.n_items + 1, 64)
    assert table.user is not None and table.user.shape == (tiny_data.n_users + 1, 64)
    assert torch.count_nonzero(table.item[0]) == 0
    assert table.card["best_epoch"] == card["best_epoch"]


def test_validation_matches_the_evaluation_protocol(cf_table, tiny_data):
    """The card's figures equal evaluate_full on the saved table (and on pop)."""
    from gensr.eval.protocol import evaluate_full
    from gensr.models.registry import model_class

    out, card = cf_table
    cls = model_class("lightgcn")
    scorer = cls(cls.config_class(cf_path=str(out)), tiny_data)
    full = evaluate_full(scorer, tiny_data, "valid", tasks=("rec",), progress=False)
    assert card["valid"]["instances"] == full["rec"]["n"]
    assert full["rec"]["R@20"] == pytest.approx(card["valid"]["lightgcn"]["R@20"], abs=1e-6)
    pop_cls = model_class("pop")
    pop = evaluate_full(pop_cls(pop_cls.config_class(), tiny_data), tiny_data, "valid",
                        tasks=("rec",), progress=False)
    assert pop["rec"]["R@20"] == pytest.approx(card["valid"]["pop"]["R@20"], abs=1e-6)


def test_lightgcn_scorer_needs_a_path_and_scores_candidates(cf_table, tiny_data):
    from gensr.eval.protocol import evaluate
    from gensr.models.registry import model_class

    cls = model_class("lightgcn")
    assert cls.name == "lightgcn" and cls.tasks == ("rec",) and not cls.trainable
    with pytest.raises(ConfigError, match="cf_path"):
        cls(cls.config_class(), tiny_data)
    scorer = cls(cls.config_class(cf_path=str(cf_table[0])), tiny_data)
    metrics = evaluate(scorer, tiny_data, "valid", progress=False)
    assert set(metrics) == {"rec"} and metrics["rec"]["R@10"] > 0.1  # chance: 0.10


def test_load_refuses_another_datas_table(cf_table, tiny_data, tmp_path):
    table = CFTable.load(cf_table[0])
    table.card = {**table.card, "data_fingerprint": "0123abcd"}
    path = table.save(tmp_path / "other.safetensors")
    with pytest.raises(RunError) as err:
        CFTable.load(path, tiny_data)
    assert "0123abcd" in str(err.value) and tiny_data.fingerprint in str(err.value)


def test_load_refuses_wrong_row_count(tiny_data, tmp_path):
    card = {"data_fingerprint": tiny_data.fingerprint}
    path = CFTable(item=torch.zeros(tiny_data.n_items, 8), card=card).save(
        tmp_path / "short.safetensors")
    with pytest.raises(RunError, match=f"needs n_items \\+ 1 = {tiny_data.n_items + 1}"):
        CFTable.load(path, tiny_data)
    ok = CFTable(item=torch.zeros(tiny_data.n_items + 1, 8), card=card).save(
        tmp_path / "ok.safetensors")
    assert CFTable.load(ok, tiny_data).user is None


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(RunError, match="does not exist"):
        CFTable.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a table")
    with pytest.raises(RunError, match="not valid safetensors .*: the file is damaged"):
        CFTable.load(bad)
    with pytest.raises(RunError, match="must end with .safetensors"):
        CFTable(item=torch.zeros(2, 2)).save(tmp_path / "cf.pt")


def test_search_only_items_get_the_fallback(tiny_data_dir, tmp_path):
    data = load_data(tiny_data_dir)
    rec_train = (pl.col("split") == "train") & (pl.col("behaviour") == "rec")
    counts = data.interactions.filter(rec_train).group_by("item_id").len()
    cold = counts.sort("len", "item_id")["item_id"][:3].to_list()
    # those items keep their search (and valid/test) interactions but lose training rec ones
    data.interactions = data.interactions.filter(~(rec_train & pl.col("item_id").is_in(cold)))
    trained = np.unique(data.interactions.filter(rec_train)["item_id"].to_numpy())
    out = tmp_path / "cf.safetensors"
    card = pretrain_cf(data, out, **FAST)
    assert card["fallback"]["items"] == data.n_items - len(trained) >= 3
    item = CFTable.load(out, data).item
    mean = item[torch.from_numpy(trained)].mean(0)
    for c in cold:
        assert torch.allclose(item[c], mean, atol=1e-6)


def test_bad_settings_are_config_errors(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="epochs must be at least 1"):
        pretrain_cf(tiny_data, tmp_path / "cf.safetensors", epochs=0, progress=False)
    with pytest.raises(ConfigError, match="unknown setting 'epoch'"):
        pretrain_cf(tiny_data, tmp_path / "cf.safetensors", epoch=3, progress=False)
    with pytest.raises(ConfigError, match=".safetensors"):
        pretrain_cf(tiny_data, tmp_path / "cf.pt", progress=False)


# --- the command -----------------------------------------------------------------------------
runner = CliRunner()


def test_cli_help():
    from gensr.cli import app

    result = runner.invoke(app, ["pretrain-cf", "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and "--out" in result.output


def test_cli_defaults_are_the_config_defaults():
    from gensr.cli import pretrain_cf_cmd

    params = inspect.signature(pretrain_cf_cmd).parameters
    for name, value in vars(CFConfig()).items():
        assert params[name].default.default == value, name


def test_cli_end_to_end(tiny_data_dir, tiny_data, tmp_path):
    from gensr.cli import app

    out = tmp_path / "cf.safetensors"
    result = runner.invoke(app, ["pretrain-cf", str(tiny_data_dir), "--out", str(out),
                                 "--epochs", "2", "--min-epochs", "1", "--dim", "16",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "R@20" in result.output and "lightgcn" in result.output and "pop" in result.output
    table = CFTable.load(out, tiny_data)
    assert table.dim == 16 and table.card["epochs_run"] == 2
    bad = runner.invoke(app, ["pretrain-cf", str(tiny_data_dir), "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and isinstance(bad.exception, ConfigError)
