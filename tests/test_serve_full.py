"""Full-catalogue serving: ``Ranker.recommend``/``search``, ``POST /v1/recommend`` and
``/v1/search`` (schema, one-line 4xx errors), ``gensr rank --full``, and a served top K that
equals ``gensr evaluate --full --retriever``'s order for rebuilt test instances."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import polars as pl
import pytest

from gensr.data.batching import eval_instances
from gensr.eval.protocol import seen_before
from gensr.serve import Ranker
from gensr.serve.errors import RequestError, UnknownItemError, UserRequiredError
from gensr.serve.examples import instance_requests
from helpers import run_gensr, write_tiny_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def runs(tiny_data, tiny_cf_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_full_runs")
    out = {name: write_tiny_run(name, tiny_data, root, tiny_cf_path)
           for name in ("gensr", "sasrec", "tem")}
    out["tem-user"] = write_tiny_run("tem", tiny_data, root / "u", user_embedding=True)
    return out


@pytest.fixture(scope="module")
def ranker(runs):
    return Ranker.from_run(runs["gensr"], device="cpu")


def test_recommend_and_search_from_python(ranker, tiny_data):
    assert [r.name for r in ranker.retrievers] == ["lightgcn", "bm25"]  # the defaults
    ids = tiny_data.item_orig_id
    history = [ids[3], (ids[7], "src", tiny_data.query_text[1]), ids[11]]
    out = ranker.recommend(history, top_k=7, rerank_n=40)
    assert (out.task, out.retriever, len(out), out.n_candidates) == ("rec", "lightgcn", 7, 40)
    assert not set(out.item_ids) & {ids[3], ids[7], ids[11]}  # consumed items excluded
    scores = [s.score for s in out]
    assert scores == sorted(scores, reverse=True)
    assert set(out.timings_ms) == {"retrieve", "rerank", "batch"}
    assert out.to_dict()["ranking"][0]["item"] == out.item_ids[0]
    # keep_consumed: the history's items are eligible again (no item is ever dropped)
    kept = ranker.recommend(history, top_k=40, rerank_n=40, keep_consumed=True)
    everything = ranker.recommend(history, top_k=40, rerank_n=tiny_data.n_items,
                                  keep_consumed=True)
    assert everything.n_candidates == tiny_data.n_items
    assert len(ranker.recommend(history, top_k=5, rerank_n=tiny_data.n_items)
               .to_dict()["ranking"]) == 5
    assert ranker.recommend(history, top_k=5, rerank_n=tiny_data.n_items).n_candidates == (
        tiny_data.n_items - 3)
    assert kept.n_candidates == 40
    found = ranker.search("garden planter pot", history, top_k=3)
    assert found.task == "src" and found.retriever == "bm25" and len(found) == 3
    # an unknown user id is refused for the lightgcn retriever; a known one is used
    user = tiny_data.user_orig_id[5]
    assert ranker.recommend([], user=user, top_k=3).n_candidates == 100
    with pytest.raises(RequestError, match="needs a user or a non-empty history"):
        ranker.recommend([], top_k=3)
    with pytest.raises(RequestError, match="unknown user id 'nobody'"):
        ranker.recommend([ids[3]], user="nobody")
    with pytest.raises(UnknownItemError):
        ranker.recommend(["NOT-AN-ITEM"])
    assert len(ranker.recommend([ids[3]], top_k=20, rerank_n=10)) == 10  # what was retrieved
    with pytest.raises(RequestError, match="no retriever 'tem'"):
        ranker.recommend([ids[3]], retriever="tem")
    # the service's batcher may hand over /v1/rank and full-catalogue requests together
    from gensr.serve.full import FullRanking, FullRequest
    from gensr.serve.ranker import Ranking, RankRequest

    mixed = ranker.rank_prepared([
        ranker.prepare_full(FullRequest([ids[3]], top_k=2)),
        ranker.prepare(RankRequest([ids[3]], candidates=[ids[4], ids[5]])),
        ranker.prepare_full(FullRequest([ids[3]], query="garden", top_k=1))])
    assert [type(m) for m in mixed] == [FullRanking, Ranking, FullRanking]
    assert mixed[2].task == "src" and len(mixed[1]) == 2
    results = ranker.rank_full_many([{"history": [ids[3]], "top_k": 2},
                                     {"history": [ids[3]], "rerank_n": 0}], return_errors=True)
    assert len(results[0]) == 2 and "request 1: rerank_n must be a positive" in str(results[1])


def test_retrievers_named_per_request_and_user_rules(runs, tiny_data):
    ranker = Ranker.from_run(runs["gensr"], device="cpu", retrievers=[
        "lightgcn", f"sasrec={runs['sasrec']}", "pop", f"tem={runs['tem-user']}"])
    ids = tiny_data.item_orig_id
    assert ranker.recommend([ids[4]], retriever="sasrec", top_k=3).retriever == "sasrec"
    assert ranker.recommend([ids[4]], retriever="pop", top_k=3).retriever == "pop"
    assert ranker.search("garden", [ids[4]], top_k=3).retriever == "pop"  # first for search
    query = tiny_data.query_text[2]  # TEM reads the data's query texts only
    with pytest.raises(UserRequiredError, match="the tem retriever reads user ids"):
        ranker.search(query, [ids[4]], retriever="tem")
    user = tiny_data.user_orig_id[9]
    assert ranker.search(query, [ids[4]], retriever="tem", user=user).retriever == "tem"
    card = ranker.model_card()
    assert [r["name"] for r in card["retrievers"]] == ["lightgcn", "sasrec", "pop", "tem"]
    assert card["retrievers"][2]["default_for"] == ["src"]


def _http(app, calls: list[tuple[str, object]]) -> list[httpx.Response]:
    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                out = []
                for path, body in calls:
                    if isinstance(body, bytes):
                        out.append(await client.post(path, content=body, headers={
                            "content-type": "application/json"}))
                    else:
                        out.append(await client.post(path, json=body))
                return out

    return asyncio.run(main())


def test_endpoints_schema_and_errors(ranker, tiny_data):
    from gensr.serve.app import create_app

    app = create_app(ranker)
    ids = tiny_data.item_orig_id
    hist = [{"item": ids[3]}, {"item": ids[9], "behaviour": "src", "query": "garden"}]
    calls = [
        ("/v1/recommend", {"history": hist, "top_k": 4}),
        ("/v1/search", {"history": hist, "query": "garden pot", "top_k": 2, "rerank_n": 30}),
        ("/v1/recommend", {"history": hist, "keep_consumed": True, "top_k": 100}),
        # top_k > rerank_n: all that was retrieved (the schema allows it)
        ("/v1/recommend", {"history": hist, "top_k": 30, "rerank_n": 10}),
        # errors
        ("/v1/search", {"history": hist}),
        ("/v1/recommend", {"history": hist, "query": "x"}),
        ("/v1/recommend", {"history": [{"item": "NOPE"}]}),
        ("/v1/recommend", {"history": hist, "top_k": 0}),
        ("/v1/recommend", {"history": hist, "rerank_n": 5000}),
        ("/v1/recommend", {"history": hist, "retriever": "bm25"}),
        ("/v1/recommend", {"history": [], "user": "nobody"}),
        ("/v1/recommend", {"history": []}),
        ("/v1/recommend", {"history": hist, "keep_consumed": "yes"}),
        ("/v1/search", b"{not json"),
    ]
    got = _http(app, calls)
    ok = [r.json() for r in got[:4]]
    for body in ok:
        assert set(body) == {"model", "task", "retriever", "n_candidates", "ranking",
                             "timings_ms"}
        assert set(body["timings_ms"]) == {"retrieve", "rerank", "total", "batch"}
        assert body["timings_ms"]["total"] >= body["timings_ms"]["rerank"] > 0
    assert (ok[0]["task"], ok[0]["retriever"], len(ok[0]["ranking"])) == ("rec", "lightgcn", 4)
    assert (ok[1]["task"], ok[1]["retriever"], len(ok[1]["ranking"])) == ("src", "bm25", 2)
    assert ok[1]["n_candidates"] <= 30
    assert {ids[3], ids[9]} & {r["item"] for r in ok[2]["ranking"]}  # kept, and retrieved
    assert not {ids[3], ids[9]} & {r["item"] for r in ok[0]["ranking"]}
    assert ok[3]["n_candidates"] == len(ok[3]["ranking"]) == 10
    expected = [
        (422, "invalid_request", "query: required"),
        (422, "invalid_request", "query: unknown field"),
        (422, "unknown_item", "unknown item id in history: 'NOPE'"),
        (422, "invalid_request", "top_k"),
        (422, "invalid_request", "rerank_n"),
        (422, "invalid_request", "retriever: no retriever 'bm25' here; this service has "
                                 "'lightgcn'"),
        (422, "unknown_user", "unknown user id 'nobody'"),
        (422, "invalid_request", "needs a user or a non-empty history"),
        (422, "invalid_request", "keep_consumed"),
        (400, "invalid_json", "not valid JSON"),
    ]
    for resp, (status, code, text) in zip(got[4:], expected, strict=True):
        body = resp.json()
        assert (resp.status_code, body["error"]) == (status, code), body
        assert text in body["message"] and "\n" not in body["message"], body
    schema = app.openapi()
    assert {"/v1/recommend", "/v1/search", "/v1/rank"} <= set(schema["paths"])
    search = schema["components"]["schemas"]["SearchBody"]
    assert "query" in search["required"] and search["additionalProperties"] is False


def test_api_key_guards_the_new_routes(ranker):
    from gensr.serve.app import ServeSettings, create_app

    app = create_app(ranker, ServeSettings(api_key="k3y"))
    (resp,) = _http(app, [("/v1/recommend", {"history": []})])
    assert resp.status_code == 401 and resp.json()["error"] == "unauthorized"


def _comparable(data, table, frame: pl.DataFrame) -> list[int]:
    """Rows of ``table`` whose request would exclude exactly what evaluation masks: the
    history's items are the user's train+valid items, and the target is not among them."""
    users, items = seen_before(data, "test")
    seen: dict[int, set[int]] = {}
    for u, i in zip(users.tolist(), items.tolist()):
        seen.setdefault(u, set()).add(i)
    ends = data.sequences.history_end(table.user, table.seq)
    rows = []
    for row in range(len(table)):
        start = data.sequences.indptr[table.user[row]]
        hist = set(data.sequences.item[start:ends[row]].tolist())
        target = int(table.candidates[row, table.target_pos[row]])
        if hist == seen.get(int(table.user[row]), set()) and target not in hist:
            rows.append(row)
    return rows


@pytest.mark.parametrize("reranker,retriever,task,fuse", [
    ("sasrec", "lightgcn", "rec", None), ("gensr", "lightgcn", "rec", None),
    ("gensr", "sasrec", "rec", None), ("gensr", "bm25", "src", None),
    ("tem", "bm25", "src", None), ("gensr", "tem", "src", None),
    # fused with the retriever's score: served = evaluated too
    ("gensr", "lightgcn", "rec", 0.5), ("gensr", "bm25", "src", 2.0),
])
def test_served_top_k_equals_evaluated_order(reranker, retriever, task, fuse, runs,
                                             tiny_cf_path, tiny_data, tmp_path):
    from gensr.serve.app import create_app

    spec = {"lightgcn": f"lightgcn={tiny_cf_path}", "bm25": "bm25",
            "sasrec": f"sasrec={runs['sasrec']}", "tem": f"tem={runs['tem']}"}[retriever]
    n = 25
    out = tmp_path / "rankings.parquet"
    code, text = run_gensr("evaluate", runs[reranker], "--full", "--retriever", spec,
                           "--rerank-n", str(n), "--device", "cpu", "--save-scores", out,
                           *(["--fuse", str(fuse)] if fuse is not None else []))
    assert code == 0, text
    ranking, scores = ("ranking", "scores") if fuse is None else ("fused_ranking",
                                                                  "fused_scores")
    frame = pl.read_parquet(out)
    table = eval_instances(tiny_data, "test", tasks=(task,))
    by_id = {int(i): row for row, i in enumerate(table.instance_id)}
    order = np.asarray([by_id[int(i)] for i in frame["instance_id"]])
    table = table.subset(order)
    rows = _comparable(tiny_data, table, frame)[:12]
    assert len(rows) >= 5
    bodies = instance_requests(tiny_data, table.subset(np.asarray(rows)))
    for b in bodies:
        del b["candidates"]
        b.update({"top_k": n, "rerank_n": n})
    ranker = Ranker.from_run(runs[reranker], device="cpu", retrievers=[spec], fuse=fuse)
    orig = tiny_data.item_orig_id
    path = "/v1/recommend" if task == "rec" else "/v1/search"
    served_http = _http(create_app(ranker), [(path, b) for b in bodies])
    served_py = ranker.rank_full_many(bodies)
    for j, row in enumerate(rows):
        want = [orig[i] for i in frame[ranking][row]]
        want_scores = np.asarray(frame[scores][row].to_list())
        got_http = served_http[j].json()
        assert served_http[j].status_code == 200, got_http
        for got in (got_http, served_py[j].to_dict()):
            assert [r["item"] for r in got["ranking"]] == want
            # fused scores are z-scores: the model's float noise across batch layouts,
            # divided by the row's spread, grows to ~1e-5
            np.testing.assert_allclose([r["score"] for r in got["ranking"]], want_scores,
                                       rtol=1e-5, atol=1e-6 if fuse is None else 2e-4)
        assert got_http["n_candidates"] == len(frame["retrieved"][row])


def test_cli_rank_full(runs, ranker, tiny_data, tmp_path):
    ids = tiny_data.item_orig_id
    code, out = run_gensr("rank", runs["gensr"], "--full", "--history", f"{ids[3]},{ids[11]}",
                          "--top-k", "4", "--rerank-n", "30", "--json", "--device", "cpu")
    assert code == 0, out
    body = json.loads(out)
    expected = ranker.recommend([ids[3], ids[11]], top_k=4, rerank_n=30)
    assert [r["item"] for r in body["ranking"]] == expected.item_ids
    assert body["retriever"] == "lightgcn" and body["n_candidates"] == 30
    request = tmp_path / "req.json"
    request.write_text(json.dumps({"history": [{"item": ids[3]}], "query": "garden pot",
                                   "top_k": 3}))
    code, out = run_gensr("rank", runs["gensr"], "--full", "--request", request, "--device",
                          "cpu")
    assert code == 0 and "retrieved by bm25" in out and "retrieve" in out, out
    code, out = run_gensr("rank", runs["gensr"], "--full", "--history", ids[3],
                          "--retriever", f"sasrec={runs['sasrec']}", "--json", "--device", "cpu")
    assert code == 0 and json.loads(out)["retriever"] == "sasrec", out
    for args, message in [
        (("--full", "--candidates", ids[3]), "leave out --candidates"),
        (("--history", ids[3], "--retriever", "bm25", "--candidates", ids[4]), "add --full"),
        (("--full", "--history", "NOPE"), "unknown item id in history: 'NOPE'"),
        (("--full", "--retriever", "nope", "--history", ids[3]), "unknown retriever 'nope'"),
    ]:
        code, out = run_gensr("rank", runs["gensr"], "--device", "cpu", *args)
        assert code == 2 and message in out and "Traceback" not in out, out


def test_the_retrieval_stage_runs_with_its_own_thread_count(runs, tiny_data):
    """On CPU a small catalogue is retrieved with one intra-op thread (``"auto"``) whatever
    the process uses, and the count is restored for the rerank; the ranking equals that of a
    ranker retrieving with the process's threads. Bad settings are refused."""
    import torch

    auto = Ranker.from_run(runs["gensr"], device="cpu", retrievers=["lightgcn"])
    inherit = Ranker.from_run(runs["gensr"], device="cpu", retrievers=["lightgcn"],
                              retrieve_threads=None)
    assert (auto.retrieve_threads, inherit.retrieve_threads) == (1, None)
    seen = []
    for ranker in (auto, inherit):
        retriever = ranker.retrievers.get("rec")
        inner = retriever.retrieve

        def recording(*args, _inner=inner, **kwargs):
            seen.append(torch.get_num_threads())
            return _inner(*args, **kwargs)

        retriever.retrieve = recording
    ids = tiny_data.item_orig_id
    history = [ids[3], ids[11], ids[20]]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = auto.recommend(history, top_k=10, rerank_n=40)
        assert torch.get_num_threads() == 2
        want = inherit.recommend(history, top_k=10, rerank_n=40)
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 2]
    assert got.item_ids == want.item_ids
    assert [s.score for s in got] == pytest.approx([s.score for s in want], abs=1e-6)
    assert auto.model_card()["retrieve_threads"] == 1
    for bad in (0, -1, 1.5, True, "two"):
        with pytest.raises(ValueError, match="retrieve_threads"):
            Ranker.from_run(runs["gensr"], device="cpu", retrieve_threads=bad)
    for bad in ("0", "x2", "-3"):
        code, out = run_gensr("serve", runs["gensr"], "--retrieve-threads", bad)
        assert code == 2 and out.strip().splitlines() == [
            f"error: --retrieve-threads must be auto, all or a number >= 1, got {bad!r}"]


def test_bad_fusion_weights_are_refused_in_one_line(runs, tiny_data):
    """``--fuse``: a weight that is not finite and >= 0, ``auto`` where no validation runs,
    a malformed NAME=W, or a weight for a retriever the ranker does not have (never a weight
    silently unused) is one error line; the Python API refuses the same."""
    from gensr.errors import ConfigError

    ids = tiny_data.item_orig_id
    rank = ("rank", runs["gensr"], "--full", "--history", ids[3], "--device", "cpu")
    for args, message in [
        (("evaluate", runs["gensr"], "--fuse", "1", "--device", "cpu"),
         "add --full --retriever"),
        (("evaluate", runs["gensr"], "--full", "--retriever", "bm25", "--fuse", "-1",
          "--device", "cpu"), "weight >= 0"),
        (("evaluate", runs["gensr"], "--full", "--retriever", "bm25", "--fuse", "much",
          "--device", "cpu"), "--fuse must be auto or a weight"),
        ((*rank, "--fuse", "auto"), "auto is for gensr evaluate"),
        ((*rank, "--fuse", "=1"), "--fuse expects W or NAME=W, got '=1'"),
        ((*rank, "--fuse", "nan"), "weight >= 0"),
        ((*rank, "--retriever", "lightgcn", "--fuse", "bm25=1"),
         "--fuse names 'bm25', which is not a retriever here (retrievers: lightgcn)"),
    ]:
        code, out = run_gensr(*args)
        assert code == 2 and message in out and "Traceback" not in out, (args, out)
    with pytest.raises(ConfigError, match="weight >= 0"):
        Ranker.from_run(runs["gensr"], device="cpu", retrievers=["lightgcn"], fuse=-0.5)
    ranker = Ranker.from_run(runs["gensr"], device="cpu", retrievers=["lightgcn"],
                             fuse={"bm25": 1.0})
    with pytest.raises(ConfigError, match="'bm25', which is not a retriever here"):
        ranker.retrievers  # noqa: B018 (built on first use, checked then)
    fused = Ranker.from_run(runs["gensr"], device="cpu", retrievers=["lightgcn"],
                            fuse={"lightgcn": "0.5"})
    assert fused.catalogue.fuse == {"lightgcn": 0.5}
    assert fused.catalogue.fusion_weight("lightgcn") == 0.5
