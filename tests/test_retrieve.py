"""Retrieval: exact top N equals a brute-force sort, BM25 (bm25s) equals the formula, the
approximate index finds what exact search finds, specs and their errors."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from gensr.data.batching import eval_instances, seeded_subset
from gensr.data.text import analyze
from gensr.errors import ConfigError
from gensr.retrieve import Exclusion, build_retriever, parse_spec, top_n
from gensr.retrieve.base import merge_top_n

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def brute_force(scores: np.ndarray, n: int, exclude: list[set[int]] | None = None
                ) -> list[list[int]]:
    """Every item by (-score, id), column 0 and excluded/-inf items left out, first n."""
    out = []
    for row, s in enumerate(scores):
        ids = [i for i in range(1, len(s)) if np.isfinite(s[i])
               and not (exclude and i in exclude[row])]
        ids.sort(key=lambda i: (-s[i], i))
        out.append(ids[:n])
    return out


def as_lists(items: torch.Tensor) -> list[list[int]]:
    return [[int(i) for i in row if i > 0] for row in items]


@pytest.mark.parametrize("n", [1, 5, 17, 40, 60])
def test_top_n_equals_a_brute_force_sort(n):
    rng = np.random.default_rng(n)
    # few distinct values: many ties, also at the N-th place; some -inf (not eligible)
    scores = rng.integers(0, 6, size=(12, 51)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.1] = -np.inf
    excl = [set(rng.choice(np.arange(1, 51), size=rng.integers(0, 8), replace=False).tolist())
            for _ in range(12)]
    t = torch.from_numpy(scores.copy())
    Exclusion.from_lists([sorted(e) for e in excl]).apply(t)
    got = top_n(t, n)
    assert got.items.shape == (12, min(n, 50))
    assert as_lists(got.items) == brute_force(scores, n, excl)
    # padding (fewer eligible than n) is item 0 with score -inf, at the end
    pad = got.items == 0
    assert torch.isinf(got.scores[pad]).all() and torch.isfinite(got.scores[~pad]).all()
    assert not pad.any() or bool((pad.long().diff(dim=1) >= 0).all())


@pytest.mark.parametrize("n", [1, 10, 49, 50])
def test_top_n_distinct_scores_take_the_one_topk_path_and_equal_the_sort(n):
    """Distinct finite scores (the dense retrievers' usual case) skip the tie handling; the
    result is still exactly the brute-force sort, excluded items and column 0 left out."""
    rng = np.random.default_rng(100 + n)
    scores = rng.normal(size=(9, 51)).astype(np.float32)
    excl = [set(rng.choice(np.arange(1, 51), size=3, replace=False).tolist()) for _ in range(9)]
    t = torch.from_numpy(scores.copy())
    Exclusion.from_lists([sorted(e) for e in excl]).apply(t)
    got = top_n(t, n)
    assert as_lists(got.items) == brute_force(scores, n, excl)
    # a tie at the N-th place in one row sends the batch down the general path: same answer
    tied = scores.copy()
    row = brute_force(scores, n + 1, excl)[0]
    if len(row) > n:
        tied[0, row[n]] = tied[0, row[n - 1]]
    t = torch.from_numpy(tied.copy())
    Exclusion.from_lists([sorted(e) for e in excl]).apply(t)
    assert as_lists(top_n(t, n).items) == brute_force(tied, n, excl)


def test_merge_top_n_drops_repeats_excluded_and_padding():
    cands = torch.tensor([[5, 3, 5, 0, 9, 7], [2, 2, 2, 4, 0, 0]])
    scores = torch.tensor([[1.0, 2.0, 1.0, 9.0, 2.0, 0.5], [3.0, 3.0, 3.0, 1.0, 0.0, 0.0]])
    got = merge_top_n(cands, scores, 4, Exclusion.from_lists([[7], []]))
    assert got.items.tolist() == [[3, 9, 5, 0], [2, 4, 0, 0]]  # ties by id: 3 before 9
    assert got.scores[0, :3].tolist() == [2.0, 2.0, 1.0]


@pytest.fixture(scope="module")
def batch(tiny_data):
    table = seeded_subset(eval_instances(tiny_data, "test", tasks=("rec",)), 24, seed=1)
    return table.make_batch(tiny_data, np.arange(len(table)), 50), table


def test_lightgcn_retriever_equals_a_sort_of_its_scores(tiny_data, tiny_cf_path, batch):
    from gensr.cf.table import CFTable

    b, table = batch
    cf = CFTable.load(tiny_cf_path, tiny_data)
    excl = [set(tiny_data.sequences.history(table.user[i:i + 1], table.seq[i:i + 1], 50)[0][0]
                .tolist()) - {0} for i in range(len(table))]
    r = build_retriever(f"lightgcn={tiny_cf_path}", tiny_data, device="cpu")
    assert r.tasks == ("rec",) and r.user_rule == "optional"
    got = r.retrieve(b, 30, Exclusion.from_lists([sorted(e) for e in excl]))
    user_scores = (cf.user[b.user] @ cf.item.T).numpy()
    assert as_lists(got.items) == brute_force(user_scores, 30, excl)
    assert torch.allclose(got.scores, torch.from_numpy(np.take_along_axis(
        user_scores, got.items.numpy(), 1)), atol=1e-6)
    # without a user (id 0) the query vector is the mean CF vector of the history's items
    anon = type(b)(**{**b.__dict__, "user": torch.zeros_like(b.user)})
    hist = r.retrieve(anon, 30)
    mask = (b.hist_item > 0).float()[..., None]
    mean = (cf.item[b.hist_item] * mask).sum(1) / mask.sum(1).clamp(min=1)
    assert as_lists(hist.items) == brute_force((mean @ cf.item.T).numpy(), 30)
    always = build_retriever(f"lightgcn-history={tiny_cf_path}", tiny_data, device="cpu")
    assert torch.equal(always.retrieve(b, 30).items, hist.items)
    assert always.problem(user=5, n_history=0) and not r.problem(user=5, n_history=0)


def test_model_retrievers_equal_a_sort_of_score_all(tiny_data, batch, tmp_path):
    from gensr.models.baselines.sasrec import SASRec, SASRecConfig

    b, _ = batch
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(hidden=16, n_layers=1, max_his_len=10), tiny_data).eval()
    run = tmp_path / "sasrec"
    model.save_pretrained(run)
    (run / "run.json").write_text(json.dumps({"model": "sasrec",
                                              "data_dir": str(tiny_data.path)}))
    r = build_retriever(f"sasrec={run}", tiny_data, device="cpu")
    assert r.kind == "dense" and r.max_his_len == 10
    with torch.no_grad():
        everything = model.score_all(b).numpy()
    assert as_lists(r.retrieve(b, 25).items) == brute_force(everything, 25)
    pop = build_retriever("pop", tiny_data, device="cpu")
    counts = tiny_data.popularity("rec")[None].repeat(len(b), 0)
    assert as_lists(pop.retrieve(b, 25).items) == brute_force(counts, 25)


def _bm25_formula(data, terms: list[str], k1: float = 1.2, b: float = 0.75) -> np.ndarray:
    """Okapi BM25 with Lucene's idf, written out from the definition."""
    docs = [analyze(data.item_text[i] + " " + data.item_category[i])
            for i in range(1, data.n_items + 1)]
    avgdl = sum(map(len, docs)) / len(docs)
    df = Counter(t for d in docs for t in set(d))
    out = np.zeros(data.n_items + 1)
    for i, d in enumerate(docs, start=1):
        tf = Counter(d)
        for t in terms:
            if tf[t]:
                idf = math.log(1 + (len(docs) - df[t] + 0.5) / (df[t] + 0.5))
                out[i] += idf * tf[t] * (k1 + 1) / (tf[t] + k1 * (1 - b + b * len(d) / avgdl))
    return out


def test_bm25_on_bm25s_equals_the_formula_and_retrieves_matches_only(tiny_data):
    from gensr.models.baselines.reference import BM25Config, BM25Scorer

    scorer = BM25Scorer(BM25Config(), tiny_data)
    queries = [analyze(q) for q in tiny_data.query_text[1:6]] + [["zzzunknown"], []]
    for terms in queries:
        np.testing.assert_allclose(scorer.bm25.score_all(terms), _bm25_formula(tiny_data, terms),
                                   rtol=1e-12, atol=1e-12)
    r = build_retriever("bm25", tiny_data, device="cpu")
    assert r.tasks == ("src",) and r.reads_query_text
    table = eval_instances(tiny_data, "test", tasks=("src",), max_instances=10, seed=0)
    b = table.make_batch(tiny_data, np.arange(len(table)), 5)
    got = r.retrieve(b, 150)
    for row, q in enumerate(b.query.tolist()):
        s = _bm25_formula(tiny_data, analyze(tiny_data.query_text[q]))
        s[s <= 0] = -np.inf  # only items matching a query term
        assert as_lists(got.items[row:row + 1]) == brute_force(s[None], 150)
    # an unseen query text is registered, then scored like any other
    (qid,) = r.add_queries(["zzz garden planter"])
    assert qid == tiny_data.n_queries + 1
    b.query[:] = qid
    np.testing.assert_allclose(r.retrieve(b, 5).scores[0].numpy(),
                               np.sort(_bm25_formula(tiny_data, analyze("zzz garden planter"))
                                       )[::-1][:5])


def test_union_fuses_by_reciprocal_rank(tiny_data, tiny_cf_path, batch):
    b, _ = batch
    a = build_retriever(f"lightgcn={tiny_cf_path}", tiny_data, device="cpu")
    p = build_retriever("pop", tiny_data, device="cpu")
    u = build_retriever(f"lightgcn={tiny_cf_path}+pop", tiny_data, device="cpu")
    assert u.name == "lightgcn+pop" and set(u.tasks) == {"rec", "src"}
    got, ga, gp = u.retrieve(b, 20), a.retrieve(b, 20), p.retrieve(b, 20)
    for row in range(len(b)):
        fused: dict[int, float] = {}
        for part in (ga, gp):
            for rank, item in enumerate(part.items[row].tolist(), start=1):
                if item > 0:
                    fused[item] = fused.get(item, 0.0) + 1.0 / (60 + rank)
        expected = sorted(fused, key=lambda i: (-fused[i], i))[:20]
        assert got.items[row].tolist() == expected


def test_hnsw_index_finds_what_exact_search_finds(tiny_data, tiny_cf_path, batch, tmp_path):
    pytest.importorskip("faiss")
    from gensr.retrieve.index import HNSWIndex, load_or_build
    from gensr.retrieve.retrievers import CFRetriever

    b, table = batch
    # the tiny CF table (200 items) through the spec, index saved beside the table
    cf = tmp_path / "cf.safetensors"
    from gensr.cf.table import copy_table

    copy_table(tiny_cf_path, cf)
    exact = build_retriever(f"lightgcn={cf}", tiny_data, device="cpu")
    approx = build_retriever(f"lightgcn={cf}", tiny_data, device="cpu", index="hnsw")
    saved = tmp_path / "retrieval" / "lightgcn.hnsw.faiss"
    assert saved.is_file() and saved.with_suffix(".json").is_file()
    excl = Exclusion.from_lists([b.hist_item[i][b.hist_item[i] > 0].tolist()
                                 for i in range(len(b))])
    e, a = exact.retrieve(b, 50, excl), approx.retrieve(b, 50, excl)
    hits = sum(len(set(x) & set(y)) for x, y in zip(as_lists(e.items), as_lists(a.items)))
    assert hits / e.valid.sum().item() >= 0.99
    assert all(not set(row) & set(excl.items[excl.rows == i].tolist())
               for i, row in enumerate(as_lists(a.items)))  # exclusions hold there too
    # a larger random catalogue: recall@100 >= 0.99
    rng = np.random.default_rng(0)
    items = torch.from_numpy(rng.normal(size=(3001, 32)).astype(np.float32))
    items[0] = 0
    users = torch.from_numpy(rng.normal(size=(65, 32)).astype(np.float32))
    dense = CFRetriever("rand", items, users, {}, max_his_len=0)
    rb = type(b)(**{**b.__dict__, "user": torch.arange(1, 25), "hist_item": b.hist_item[:, :0]})
    e = dense.retrieve(rb, 100)
    a = dense.use_index("hnsw", tmp_path / "rand.faiss").retrieve(rb, 100)
    hits = sum(len(set(x) & set(y)) for x, y in zip(as_lists(e.items), as_lists(a.items)))
    assert hits / (100 * len(rb)) >= 0.99
    # built once: a second load reuses the file; changed vectors rebuild it
    again = load_or_build(items.numpy(), tmp_path / "rand.faiss")
    assert again.digest == HNSWIndex.load(tmp_path / "rand.faiss").digest
    mtime = (tmp_path / "rand.faiss").stat().st_mtime_ns
    load_or_build(items.numpy(), tmp_path / "rand.faiss")
    assert (tmp_path / "rand.faiss").stat().st_mtime_ns == mtime
    changed = items.numpy().copy()
    changed[1] += 1
    assert load_or_build(changed, tmp_path / "rand.faiss").digest != again.digest


def test_specs_and_their_errors(tiny_data, tiny_cf_path, tmp_path):
    s = parse_spec("src:bm25+tem=runs/x")
    assert (s.task, s.name, [p.name for p in s.parts], s.parts[1].path) == (
        "src", "bm25+tem", ["bm25", "tem"], "runs/x")
    assert parse_spec("lightgcn=/a/b.safetensors").path == "/a/b.safetensors"
    with pytest.raises(ConfigError, match="unknown retriever 'nope'"):
        build_retriever("nope", tiny_data, device="cpu")
    with pytest.raises(ConfigError, match="needs a trained run: sasrec=RUN_DIR"):
        build_retriever("sasrec", tiny_data, device="cpu")
    with pytest.raises(ConfigError, match="needs a CF table"):
        build_retriever("lightgcn", tiny_data, device="cpu", run_dir=tmp_path)
    with pytest.raises(ConfigError, match="does not serve src"):
        build_retriever(f"src:lightgcn={tiny_cf_path}", tiny_data, device="cpu")
    with pytest.raises(ConfigError, match="index must be one of"):
        build_retriever("pop", tiny_data, device="cpu", index="ivf")
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.json").write_text(json.dumps({"model": "tem", "config": {},
                                               "data_fingerprint": tiny_data.fingerprint}))
    with pytest.raises(ConfigError, match="is a tem run, not sasrec"):
        build_retriever(f"sasrec={run}", tiny_data, device="cpu")
    assert build_retriever("rec:pop", tiny_data, device="cpu").tasks == ("rec",)
    # a run directory holding cf.safetensors serves as the lightgcn table
    from gensr.cf.table import copy_table

    copy_table(tiny_cf_path, run / "cf.safetensors")
    assert build_retriever("lightgcn", tiny_data, device="cpu", run_dir=run).name == "lightgcn"
    assert Path(run / "cf.safetensors").is_file()
