"""The inference API in-process: add_queries, Ranker (validation, batching, equality with
evaluate), the gensr rank syntax, bind/API-key rules, the micro-batcher and the app's
guards (API key, 503 when the queue is full) through an in-process ASGI client."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from gensr.cli import app as cli_app
from gensr.errors import ConfigError, DataError
from gensr.models.registry import model_class
from gensr.serve import (
    Interaction,
    Limits,
    OverloadedError,
    Ranker,
    RankRequest,
    RequestError,
    TaskNotServedError,
    UnknownItemError,
)
from gensr.serve.batcher import MicroBatcher
from gensr.serve.parsing import load_request, parse_candidates, parse_history
from gensr.serve.server import check_bind, is_loopback, require_serve_extra
from test_serve_support import (
    eval_requests_and_scores,
    one_torch_thread,  # noqa: F401 - an autouse fixture
    tiny_runs,
)


@pytest.fixture(scope="module")
def runs(tiny_data_dir, tmp_path_factory):
    return tiny_runs(tiny_data_dir, tmp_path_factory.getbasetemp() / "serve_runs")


@pytest.fixture(scope="module")
def gensr_ranker(runs, tiny_data):
    return Ranker.from_run(runs["gensr"], data=tiny_data, device="cpu")


@pytest.fixture(scope="module")
def pop_ranker(runs, tiny_data):
    return Ranker.from_run(runs["pop"], data=tiny_data, device="cpu")


@pytest.fixture(scope="module")
def items(tiny_data) -> list[str]:
    return tiny_data.items.sort("item_id")["orig_id"].head(20).to_list()


def _reference(name, data):
    cls = model_class(name)
    return cls(cls.config_class(), data)


# --- add_queries ------------------------------------------------------------------------
def test_add_queries_default_knows_only_the_data(tiny_data):
    from gensr.models.baselines.reference import PopularityConfig, PopularityScorer

    class QueryReadingPop(PopularityScorer):  # a model that reads queries, default hook
        reads_query_text = True

    pop = QueryReadingPop(PopularityConfig(), tiny_data)
    known = tiny_data.query_text[1:3]
    assert pop.add_queries(known) == [tiny_data.query_index[t] for t in known]
    with pytest.raises(DataError, match="pop cannot read query texts.*'usb cable'"):
        pop.add_queries([known[0], "usb cable"])


def test_add_queries_gensr_tokenises_new_texts_once(gensr_ranker, tiny_data):
    model = gensr_ranker.model
    n = len(model.query_tokens)
    assert n == len(model.known_queries) + 1 >= tiny_data.n_queries + 1
    ids = model.add_queries(["kitchen knife set", tiny_data.query_text[1], "kitchen knife set"])
    assert ids == [n, 1, n] and len(model.query_tokens) == n + 1
    tok = model.backbone.tokenizer
    expected = tok("kitchen knife set", add_special_tokens=False)["input_ids"]
    assert model.query_tokens[n].tolist() == expected[: model.config.max_query_tokens]
    # the prompt of the new query holds its tokens
    ids_row = model.prompts.row(1, model.query_tokens[n]).tolist()
    assert all(t in ids_row for t in expected)


def test_add_queries_bm25_scores_unseen_query_text(tiny_data):
    bm25 = _reference("bm25", tiny_data)
    ranker = Ranker(bm25, tiny_data)
    text = tiny_data.item_text[5]
    query = " ".join(text.lower().split()[:2])  # two words of item 5's title
    assert query not in tiny_data.query_index
    orig = tiny_data.items.sort("item_id")["orig_id"]
    cands = [orig[i - 1] for i in (4, 5, 6)]  # item ids 4, 5, 6
    ranking = ranker.rank([], cands, query=query)
    assert ranking.task == "src" and ranking[0].item == cands[1] and ranking[0].score > 0
    assert bm25.known_queries[query] == tiny_data.n_queries + 1


# --- Ranker: equality with evaluate ----------------------------------------------------------
@pytest.mark.parametrize("name", ["bm25", "pop"])
def test_ranker_equals_evaluate_exactly(name, runs, tiny_data, tmp_path):
    ranker = Ranker.from_run(runs[name], data=tiny_data, device="cpu")
    bodies, expected = eval_requests_and_scores(ranker.model, tiny_data, tmp_path,
                                                max_instances=80)
    rankings = ranker.rank_many(bodies)
    for body, ranking, scores in zip(bodies, rankings, expected):
        got = {s.item: s.score for s in ranking}
        assert [got[c] for c in body["candidates"]] == scores.astype(np.float64).tolist()
        order = [body["candidates"].index(i) for i in ranking.item_ids]
        assert order == list(np.argsort(-scores, kind="stable"))


def test_gensr_batched_equals_one_by_one(gensr_ranker, tiny_data, items):
    reqs = [RankRequest(history=[(items[i], "rec"), (items[i + 1], "src", "usb cable")],
                        candidates=items[5:15], query=q)
            for i, q in enumerate([None, "kitchen cutlery", None, "a query nobody typed"])]
    reqs.append(RankRequest(history=[], candidates=items[3:6]))  # another candidate count
    together = gensr_ranker.rank_many(reqs)
    for req, ranking in zip(reqs, together):
        alone = gensr_ranker.rank(req.history, req.candidates, req.query)
        np.testing.assert_allclose([s.score for s in ranking],
                                   [alone.items[alone.item_ids.index(i)].score
                                    for i in ranking.item_ids], rtol=1e-5)
        assert ranking.task == ("src" if req.query else "rec")


def test_history_forms_and_truncation(gensr_ranker, items):
    cands = items[10:20]
    long = [(items[i], "rec") for i in range(10)]
    kept = long[-gensr_ranker.max_his_len:]
    a = gensr_ranker.rank(long, cands)
    b = gensr_ranker.rank(kept, cands)
    assert a.item_ids == b.item_ids and [s.score for s in a] == [s.score for s in b]
    forms = [
        [items[0], (items[1], "src", "kitchen cutlery")],
        [Interaction(items[0]), Interaction(items[1], "src", "kitchen cutlery")],
        [{"item": items[0], "behaviour": "rec"},
         {"item": items[1], "behaviour": "src", "query": "kitchen cutlery"}],
    ]
    results = [gensr_ranker.rank(f, cands, query="office desk") for f in forms]
    assert all(r.to_dict() == results[0].to_dict() for r in results)


def test_top_k_and_stable_ties(pop_ranker, tiny_data, items):
    counts = tiny_data.popularity("rec")
    index = tiny_data.item_index
    by_count: dict[float, list[str]] = {}
    for it in tiny_data.items["orig_id"].to_list():
        by_count.setdefault(counts[index[it]], []).append(it)
    tied = next(v for v in by_count.values() if len(v) >= 3)[:3]
    ranking = pop_ranker.rank([], tied[::-1])
    assert ranking.item_ids == tied[::-1]  # equal scores keep the request's order
    top = pop_ranker.rank([], items, top_k=3)
    assert len(top) == 3 and top.n_candidates == len(items)
    assert top.item_ids == pop_ranker.rank([], items).item_ids[:3]
    assert len(pop_ranker.rank([], items[:2], top_k=50)) == 2


# --- Ranker: errors -----------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,error,message", [
    (dict(candidates=[]), RequestError, "candidates is empty"),
    (dict(candidates="A1"), RequestError, "must be a list"),
    (dict(candidates=["NOPE", "X", "{item}"]), UnknownItemError, "'NOPE', 'X'"),
    (dict(candidates=["{item}", 3]), RequestError, "item id strings"),
    (dict(candidates=["{item}", "{item}"]), RequestError, "repeat item ids"),
    (dict(candidates=["{item}"], query=""), RequestError, "query is empty"),
    (dict(candidates=["{item}"], query=5), RequestError, "query must be a string"),
    (dict(candidates=["{item}"], query="q" * 600), RequestError, "query too long"),
    (dict(candidates=["{item}"], top_k=0), RequestError, "top_k must be a positive"),
    (dict(candidates=["{item}"], top_k=True), RequestError, "top_k must be a positive"),
    (dict(candidates=["{item}"], history=["GONE"]), UnknownItemError, "history: 'GONE'"),
    (dict(candidates=["{item}"], history=[("{item}", "buy")]), RequestError,
     "behaviour must be 'rec' or 'src'"),
    (dict(candidates=["{item}"], history=[("{item}", "rec", "q")]), RequestError,
     "rec interaction has no query"),
    (dict(candidates=["{item}"], history=[{"id": "{item}"}]), RequestError, "needs keys"),
    (dict(candidates=["{item}"], history=[7]), RequestError, r"history\[0\] must be"),
    (dict(candidates=["{item}"], history="{item}"), RequestError, "history must be a list"),
])
def test_ranker_request_errors(pop_ranker, items, kwargs, error, message):
    def fill(v):
        if isinstance(v, str):
            return v.replace("{item}", items[0])
        if isinstance(v, (list, tuple)):
            return type(v)(fill(x) for x in v)
        if isinstance(v, dict):
            return {k: fill(x) for k, x in v.items()}
        return v

    with pytest.raises(error, match=message):
        pop_ranker.rank(**{k: fill(v) for k, v in kwargs.items()})


def test_limits_and_task_not_served(runs, tiny_data, items):
    ranker = Ranker.from_run(runs["bm25"], data=tiny_data,
                             limits=Limits(max_candidates=5, max_new_queries=2))
    with pytest.raises(TaskNotServedError, match="bm25 does not serve recommendation"):
        ranker.rank([], items[:3])
    with pytest.raises(RequestError, match="too many candidates: 6 > 5"):
        ranker.rank([], items[:6], query="x")
    ranker.rank([], items[:3], query="new one")
    ranker.rank([], items[:3], query="new two")
    ranker.rank([(items[0], "src", "new four")], items[:3], query="new one")  # nothing new
    with pytest.raises(OverloadedError, match="max_new_queries = 2"):
        ranker.rank([], items[:3], query="new three")


def test_unseen_query_is_fine_for_a_model_that_ignores_queries(pop_ranker, items):
    ranking = pop_ranker.rank([], items[:3], query="never seen")
    assert ranking.n_candidates == 3


def test_history_queries_are_looked_up_not_registered(gensr_ranker, pop_ranker, items,
                                                      tiny_data):
    known = tiny_data.query_text[2]
    history = [(items[0], "src", "typed once, long ago"), (items[1], "src", known)]
    prepared = pop_ranker.prepare(RankRequest(history, items[2:5]))
    assert pop_ranker._resolve_queries(prepared).hist_query == [0, 2]
    assert pop_ranker.rank(history, items[2:5]).n_candidates == 3  # no error for pop
    n = len(gensr_ranker.model.query_tokens)
    gensr_ranker.rank(history, items[2:5], query=known)
    assert len(gensr_ranker.model.query_tokens) == n


def test_rank_many_isolates_failures(pop_ranker, items):
    reqs = [{"candidates": items[:4]}, {"candidates": ["NOPE"]},
            {"candidates": []}, {"candidates": items[2:6]}]
    out = pop_ranker.rank_many(reqs, return_errors=True)
    assert out[0].item_ids == pop_ranker.rank([], items[:4]).item_ids
    assert isinstance(out[1], UnknownItemError) and "request 1" in str(out[1])
    assert isinstance(out[2], RequestError) and "request 2" in str(out[2])
    assert out[3].n_candidates == 4
    with pytest.raises(UnknownItemError, match="request 1: unknown item id"):
        pop_ranker.rank_many(reqs)


def test_model_card_reads_metrics(runs, tiny_data):
    (runs["bm25"] / "metrics_valid.json").write_text(json.dumps({"src": {"R@5": 0.5}}))
    card = Ranker.from_run(runs["bm25"], data=tiny_data).model_card()
    assert card["model"] == "bm25" and card["tasks"] == ["src"]
    assert card["metrics"]["valid"]["src"]["R@5"] == 0.5
    assert card["data"]["fingerprint"] == tiny_data.fingerprint


# --- command line -------------------------------------------------------------------------
def test_history_and_candidate_syntax(tmp_path):
    assert parse_history("B1, B2:src:usb cable: 2m,B3:rec") == [
        Interaction("B1"), Interaction("B2", "src", "usb cable: 2m"), Interaction("B3")]
    assert parse_candidates("B1,B2 , B3,") == ["B1", "B2", "B3"]
    lines = tmp_path / "h.txt"
    lines.write_text("B1\nB2:src:usb, cable\n")
    assert parse_history(f"@{lines}")[1] == Interaction("B2", "src", "usb, cable")
    js = tmp_path / "c.json"
    js.write_text('["B1", "B2"]')
    assert parse_candidates(f"@{js}") == ["B1", "B2"]
    with pytest.raises(ConfigError, match="does not exist"):
        parse_history(f"@{tmp_path / 'missing'}")
    req = tmp_path / "req.json"
    req.write_text(json.dumps({"candidates": ["B1"], "query": "x", "top_k": 1}))
    assert load_request(str(req)) == RankRequest(history=[], candidates=["B1"], query="x",
                                                 top_k=1)
    req.write_text('{"candidates": ["B1"], "k": 1}')
    with pytest.raises(ConfigError, match="unknown field"):
        load_request(str(req))


def test_gensr_rank_command(runs, items, tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli_app, ["rank", str(runs["pop"]), "--history",
                                  f"{items[0]},{items[1]}:src:kitchen cutlery",
                                  "--candidates", ",".join(items[2:8]), "--top-k", "3"])
    assert res.exit_code == 0, res.output
    assert "pop recommendation: 3 of 6 candidates" in res.output
    req = tmp_path / "req.json"
    req.write_text(json.dumps({"candidates": items[2:5], "query": "kitchen cutlery"}))
    res = runner.invoke(cli_app, ["rank", str(runs["bm25"]), "--request", str(req), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["model"] == "bm25" and out["task"] == "src" and len(out["ranking"]) == 3
    res = runner.invoke(cli_app, ["rank", str(runs["bm25"]), "--candidates", items[0]])
    assert isinstance(res.exception, TaskNotServedError)


def test_rank_command_error_is_one_line_and_needs_no_fastapi(runs):
    # at exit, say whether the [serve] extra was imported: gensr rank must not need it
    code = ("import atexit, sys; atexit.register(lambda: print('serve extra imported:', "
            "any(m in sys.modules for m in ('fastapi', 'uvicorn')))); "
            "from gensr.cli import main; main()")
    res = subprocess.run([sys.executable, "-c", code, "rank", str(runs["pop"]),
                          "--candidates", "NOPE-1,NOPE-2"], capture_output=True, text=True)
    assert res.returncode == 2
    assert "unknown item ids in candidates: 'NOPE-1', 'NOPE-2'" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr
    assert "serve extra imported: False" in res.stdout


# --- binding, API key, the [serve] extra ------------------------------------------------------
@pytest.mark.parametrize("host,loopback", [
    ("127.0.0.1", True), ("127.5.0.1", True), ("localhost", True), ("::1", True),
    ("[::1]", True), ("0.0.0.0", False), ("::", False), ("192.168.1.4", False),
    ("example.org", False)])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_check_bind_needs_key_or_insecure_beyond_loopback():
    check_bind("127.0.0.1", None, False)
    check_bind("0.0.0.0", "k", False)
    check_bind("0.0.0.0", None, True)
    with pytest.raises(ConfigError, match="refusing to listen on 0.0.0.0 without an API key"):
        check_bind("0.0.0.0", None, False)


def test_serve_command_refuses_public_host_without_key(runs, monkeypatch):
    monkeypatch.delenv("GENSR_API_KEY", raising=False)
    res = CliRunner().invoke(cli_app, ["serve", str(runs["pop"]), "--host", "0.0.0.0"])
    assert isinstance(res.exception, ConfigError) and "--insecure" in str(res.exception)


def test_missing_serve_extra_is_named(monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *args):
        if name == "uvicorn":
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(Exception, match=r"\[serve\] extra \(uvicorn not installed\)"):
        require_serve_extra()


# --- micro-batcher ------------------------------------------------------------------------
def test_batcher_batches_isolates_errors_and_refuses_when_full():
    calls: list[int] = []

    def score(items):
        calls.append(len(items))
        time.sleep(0.05)
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]

    async def main():
        batcher = MicroBatcher(score, max_batch=8, window_ms=20, max_queue=8)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in [1, 2, -3, 4]),
                                       return_exceptions=True)
        assert results[:2] == [10, 20] and results[3] == 40
        assert isinstance(results[2], ValueError)
        assert calls == [4]  # one batch
        flood = await asyncio.gather(*(batcher.submit(i) for i in range(40)),
                                     return_exceptions=True)
        refused = [r for r in flood if isinstance(r, OverloadedError)]
        assert refused and len(refused) <= 40 - 8
        assert all(r == i * 10 for i, r in enumerate(flood) if not isinstance(r, Exception))
        assert batcher.stats.refused == len(refused)
        await batcher.stop()
        with pytest.raises(OverloadedError, match="shutting down"):
            await batcher.submit(1)

    asyncio.run(main())


# --- the app in-process: API key, 503 -----------------------------------------------------------
def _call(app, requests):
    """Run the app's lifespan and send ``requests`` (method, path, kwargs) concurrently."""

    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return await asyncio.gather(*(client.request(m, p, **kw)
                                              for m, p, kw in requests))

    return asyncio.run(main())


def test_app_api_key(pop_ranker, items):
    from gensr.serve.app import ServeSettings, create_app

    app = create_app(pop_ranker, ServeSettings(api_key="s3cret"))
    body = {"json": {"candidates": items[:3]}}
    r = _call(app, [("POST", "/v1/rank", body),
                    ("POST", "/v1/rank", {**body, "headers": {"X-API-Key": "wrong"}}),
                    ("POST", "/v1/rank", {**body, "headers": {"X-API-Key": "s3cret"}}),
                    ("GET", "/v1/model", {}),
                    ("GET", "/v1/model", {"headers": {"X-API-Key": "s3cret"}}),
                    ("GET", "/healthz", {}),
                    ("GET", "/openapi.json", {})])
    assert [x.status_code for x in r] == [401, 401, 200, 401, 200, 200, 200]
    assert r[0].json()["error"] == "unauthorized" and "X-API-Key" in r[0].json()["message"]
    assert r[4].json()["serving"]["api_key_required"] is True
    assert "s3cret" not in r[4].text
    schemes = r[6].json()["components"]["securitySchemes"]
    assert any(s.get("name") == "X-API-Key" for s in schemes.values())


def test_app_answers_503_when_the_queue_is_full(pop_ranker, items):
    from gensr.serve.app import ServeSettings, create_app

    class Slow(Ranker):
        def rank_prepared(self, prepared):
            time.sleep(0.1)
            return super().rank_prepared(prepared)

    slow = Slow(pop_ranker.model, pop_ranker.data)
    app = create_app(slow, ServeSettings(max_batch=1, max_queue=2, window_ms=0))
    r = _call(app, [("POST", "/v1/rank", {"json": {"candidates": items[:3]}})] * 12)
    codes = [x.status_code for x in r]
    assert set(codes) == {200, 503} and codes.count(200) >= 2
    busy = next(x for x in r if x.status_code == 503)
    assert busy.json()["error"] == "overloaded" and busy.headers["retry-after"] == "1"


@pytest.mark.parametrize("command", ["rank", "serve"])
def test_help(command):
    res = CliRunner().invoke(cli_app, [command, "--help"])
    assert res.exit_code == 0 and "Usage" in res.output


def test_models_that_ignore_queries_accept_unseen_ones(tiny_data):
    from gensr.models import model_class

    pop = model_class("pop")(model_class("pop").config_class(), tiny_data)
    assert pop.add_queries(["never seen before"]) == [0]
    bm25 = model_class("bm25")(model_class("bm25").config_class(), tiny_data)
    new = bm25.add_queries(["never seen before"])[0]
    assert new > tiny_data.n_queries
