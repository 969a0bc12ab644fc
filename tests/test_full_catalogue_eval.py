"""Full-catalogue evaluation through a retriever: the masking rules, the retriever alone equals
full ranking, the rerank's ceiling, and ``gensr evaluate --full --retriever``."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch

from gensr.eval.protocol import evaluate_full, seen_before
from gensr.eval.rerank import evaluate_rerank, rerank_ks
from gensr.models.base import ModelConfig, SRModel
from gensr.retrieve import build_retriever
from gensr.retrieve.retrievers import ScoringRetriever
from helpers import SeenThenTarget, run_gensr, write_tiny_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Reverse(SRModel):
    """A reranker scoring candidates by their position: it reverses the retrieval."""

    name = "reverse"
    trainable = False

    def score(self, batch):
        return torch.arange(batch.candidates.shape[1], dtype=torch.float)[None].expand(
            len(batch), -1).clone()


@pytest.fixture(scope="module")
def runs(tiny_data, tiny_cf_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("fullcat_runs")
    return {name: write_tiny_run(name, tiny_data, root, tiny_cf_path)
            for name in ("gensr", "sasrec", "tem")}


def test_retrieval_masks_earlier_splits_never_the_target(tiny_data, tmp_path):
    # the user's train and valid items outscore the target: never retrieved at test
    retriever = ScoringRetriever("seen", SeenThenTarget(tiny_data, "test", ["train", "valid"]))
    out = tmp_path / "r.parquet"
    res = evaluate_rerank(None, retriever, tiny_data, "test", n=5, progress=False,
                          rankings_out=out)
    assert set(res.retriever) == {"rec", "src"}
    for task in ("rec", "src"):
        assert res.retriever[task]["R@1"] == pytest.approx(1.0)
    frame = pl.read_parquet(out)
    users, items = seen_before(tiny_data, "test")
    seen: dict[int, set[int]] = {}
    for u, i in zip(users.tolist(), items.tolist()):
        seen.setdefault(u, set()).add(i)
    target_was_seen = 0
    for u, target, got in zip(frame["user_id"], frame["target_item"], frame["retrieved"]):
        assert got[0] == target
        assert not (set(got) & (seen.get(u, set()) - {target}))
        target_was_seen += target in seen.get(u, set())
    assert len(frame) == tiny_data.candidates("test").height
    assert target_was_seen > 0  # targets the user had before: retrieved all the same
    # at valid only train items are masked: the user's test items outrank the target
    retriever = ScoringRetriever("seen", SeenThenTarget(tiny_data, "valid", ["test"]))
    res = evaluate_rerank(None, retriever, tiny_data, "valid", n=5, progress=False)
    assert res.retriever["rec"]["R@1"] < 0.8
    retriever = ScoringRetriever("seen", SeenThenTarget(tiny_data, "valid", ["train"]))
    res = evaluate_rerank(None, retriever, tiny_data, "valid", n=5, progress=False)
    assert res.retriever["rec"]["R@1"] == pytest.approx(1.0)


def test_retriever_alone_equals_full_ranking_below_n(tiny_data, tiny_cf_path, runs):
    from gensr.models.baselines.lightgcn import LightGCNConfig, LightGCNScorer
    from gensr.runs import load_run

    sasrec, _ = load_run(runs["sasrec"], tiny_data, "cpu")
    models = {f"lightgcn={tiny_cf_path}": LightGCNScorer(
        LightGCNConfig(cf_path=str(tiny_cf_path)), tiny_data), f"sasrec={runs['sasrec']}": sasrec}
    for spec, model in models.items():
        retriever = build_retriever(spec, tiny_data, device="cpu")
        res = evaluate_rerank(None, retriever, tiny_data, "test", n=30, progress=False,
                              max_instances=120, seed=3)
        full = evaluate_full(model, tiny_data, "test", progress=False, max_instances=120,
                             seed=3)
        assert res.retriever["rec"]["n"] == full["rec"]["n"]
        for k in (1, 5, 10, 20):
            for m in ("R", "N"):
                assert res.retriever["rec"][f"{m}@{k}"] == pytest.approx(
                    full["rec"][f"{m}@{k}"], abs=1e-9), (spec, m, k)
        # reranked by the model that retrieved: the same order, the same metrics
        again = evaluate_rerank(model, retriever, tiny_data, "test", n=30, progress=False,
                                max_instances=120, seed=3)
        for name, value in res.retriever["rec"].items():
            assert again.rerank["rec"][name] == pytest.approx(value, abs=1e-9)


def test_rerank_ceiling_and_the_reranked_order(tiny_data, tiny_cf_path, tmp_path):
    retriever = build_retriever(f"lightgcn={tiny_cf_path}", tiny_data, device="cpu")
    out = tmp_path / "rr.parquet"
    res = evaluate_rerank(_Reverse(ModelConfig(), tiny_data), retriever, tiny_data, "test",
                          n=15, progress=False, rankings_out=out)
    assert rerank_ks(15) == (1, 5, 10, 15)
    rec, alone = res.rerank["rec"], res.retriever["rec"]
    assert rec["R@15"] == pytest.approx(alone["R@15"]) and 0 < alone["R@15"] < 1
    assert rec["R@1"] <= rec["R@5"] <= rec["R@10"] <= rec["R@15"]
    assert rec["R@1"] != pytest.approx(alone["R@1"])  # reversed: a different order
    frame = pl.read_parquet(out)
    for got, ranking in zip(frame["retrieved"], frame["ranking"]):
        assert ranking.to_list() == got.to_list()[::-1]
    assert res.seconds["retrieve"] >= 0 and res.seconds["rerank"] > 0


def test_cli_evaluate_full_with_retrievers(runs, tiny_cf_path, tmp_path):
    run = runs["gensr"]
    code, out = run_gensr("evaluate", run, "--full", "--retriever", "lightgcn",
                          "--retriever", "bm25", "--rerank-n", "20", "--device", "cpu",
                          "--max-instances", "60", "--save-scores", tmp_path / "s.parquet")
    assert code == 0, out
    assert "R@20" in out and "rerank's ceiling" in out
    report = json.loads((run / "metrics_test_rerank.json").read_text())
    assert set(report) == {"lightgcn", "bm25"}
    assert set(report["lightgcn"]["rerank_metrics"]) == {"rec"}
    assert set(report["bm25"]["rerank_metrics"]) == {"src"}
    assert report["lightgcn"]["n"] == 20 and report["lightgcn"]["instances"] <= 60
    lg = pl.read_parquet(tmp_path / "s.lightgcn.parquet")
    assert {"instance_id", "retrieved", "ranking", "scores"} <= set(lg.columns)
    assert all(len(r) <= 20 for r in lg["ranking"])
    # one-line errors, exit 2
    for args, message in [
        (("--retriever", "lightgcn"), "add --full"),
        (("--full",), "cannot score every item"),
        (("--full", "--retriever", "nope"), "unknown retriever 'nope'"),
        (("--full", "--retriever", "sasrec"), "sasrec=RUN_DIR"),
    ]:
        code, out = run_gensr("evaluate", run, "--device", "cpu", *args)
        assert code == 2 and message in out and "Traceback" not in out, out
    code, out = run_gensr("evaluate", runs["sasrec"], "--full", "--retriever", "bm25",
                          "--device", "cpu")
    assert code == 2 and "nothing to rerank" in out
    # full ranking of a model that can, on the same seeded subset
    code, out = run_gensr("evaluate", runs["sasrec"], "--full", "--device", "cpu",
                          "--max-instances", "50")
    assert code == 0, out
    assert json.loads((runs["sasrec"] / "metrics_test_full.json").read_text())["rec"]["n"] <= 50
