"""Scale: the KuaiSAR load generator, the vectorised negative sampler (the same draw as the
row-by-row one it replaced), the list columns and the caches in the data directory."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from gensr.data.candidates import InteractedSet, sample_negatives
from gensr.errors import DataError


def _reference_sample_negatives(rng, users, interacted, n, *, exclude=None):
    """The row-by-row sampler gensr used before vectorising (kept here as the reference)."""
    n_items = interacted.n_items
    users = np.asarray(users, dtype=np.int64)
    out = np.zeros((len(users), n), dtype=np.int64)
    filled = np.zeros(len(users), dtype=np.int64)
    todo = np.arange(len(users))
    width = max(2 * n, n + 8)
    while len(todo):
        draw = rng.integers(1, n_items + 1, size=(len(todo), width))
        ok = ~interacted.contains(users[todo], draw)
        if exclude is not None:
            ok &= draw != exclude[todo][:, None]
        still = []
        for row, r in enumerate(todo):
            have = out[r, : filled[r]]
            fresh = draw[row][ok[row]]
            if filled[r]:
                fresh = fresh[~np.isin(fresh, have)]
            _, first = np.unique(fresh, return_index=True)
            fresh = fresh[np.sort(first)][: n - filled[r]]
            out[r, filled[r] : filled[r] + len(fresh)] = fresh
            filled[r] += len(fresh)
            if filled[r] < n:
                still.append(r)
        todo = np.asarray(still, dtype=np.int64)
        width = min(4 * width, n_items + 1)
    return out


@pytest.mark.parametrize("n_items,n,per_user,excl", [
    (5000, 3, 40, False),  # large catalogue: most rows done from their first draws
    (5000, 99, 200, True),
    (130, 96, 30, False),  # tight: rows need several rounds (Magazine-like)
    (40, 10, 25, True),
    (12, 1, 0, False),
])
def test_vectorised_sampler_draws_what_the_row_loop_drew(monkeypatch, n_items, n, per_user,
                                                         excl):
    rng = np.random.default_rng(n_items + n)
    n_users = 60
    users = np.repeat(np.arange(1, n_users + 1), per_user)
    items = rng.integers(1, n_items + 1, size=len(users))
    interacted = InteractedSet(users, items, n_items)
    rows = np.sort(rng.integers(1, n_users + 1, size=300))
    exclude = rng.integers(1, n_items + 1, size=len(rows)) if excl else None
    expected = _reference_sample_negatives(np.random.default_rng(5), rows, interacted, n,
                                           exclude=exclude)
    monkeypatch.setattr("gensr.data.candidates.BLOCK_ROWS", 7)  # several blocks per round
    got = sample_negatives(np.random.default_rng(5), rows, interacted, n, exclude=exclude)
    np.testing.assert_array_equal(got, expected)
    assert not interacted.contains(rows, got).any()
    assert all(len(set(r)) == n for r in got.tolist())
    if exclude is not None:
        assert not (got == exclude[:, None]).any()


def test_sampler_refuses_a_user_without_enough_items():
    interacted = InteractedSet(np.array([1, 1, 1]), np.array([1, 2, 3]), 5)
    with pytest.raises(DataError, match="user id 1 has only 2 items"):
        sample_negatives(np.random.default_rng(0), np.array([1]), interacted, 3)


def test_bulk_word_counts_equal_berts_own_steps():
    from collections import Counter

    from tokenizers import normalizers, pre_tokenizers

    from gensr.models.gensr.backbone import word_counts

    normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    pre = pre_tokenizers.BertPreTokenizer()
    texts = ["w20 w34 w3. Funny Funny joke", "", "   ", "Hello, World! (x2) don't-stop",
             "a\tb\nc", "x__y ~~ [1, 2] 3.5%", "Café crème déjà-vu", "美食 Baking", "\x00ctrl",
             "UPPER lower 123abc", "Ünïcode ÀÉ"]
    expected: Counter[str] = Counter()
    for text in texts:
        expected.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    assert word_counts(texts, normalizer, pre) == expected
    assert expected["funny"] == 2 and expected["cafe"] == 1  # both paths were exercised


class _CountingTokenizer:
    """Wraps a tokenizer and counts the texts it is asked to tokenise."""

    def __init__(self, inner):
        self.inner, self.texts = inner, 0
        self.backend_tokenizer = inner.backend_tokenizer
        self.pad_token_id = inner.pad_token_id

    def __call__(self, texts, **kwargs):
        self.texts += len(texts)
        return self.inner(texts, **kwargs)


def test_token_tables_are_cached_by_tokenizer_and_width(tmp_path, monkeypatch):
    from gensr.models.gensr.backbone import train_wordpiece
    from gensr.models.gensr.tokens import (
        CACHE_DIR,
        cached_token_table,
        token_table,
        tokenizer_fingerprint,
    )

    texts = ["", "w1 w2 w3. Food Baking", "a much longer caption with many words in it", "x"]
    tok = _CountingTokenizer(train_wordpiece(texts[1:], 200, extra_words=["yes", "no"]))
    reference = torch.full((4, 5), tok.pad_token_id, dtype=torch.long)
    for i, text in enumerate(texts[1:], start=1):
        ids = tok.inner(text, add_special_tokens=False)["input_ids"][:5]
        reference[i, : len(ids)] = torch.tensor(ids)
    monkeypatch.setattr("gensr.models.gensr.tokens.CHUNK", 2)  # several chunks
    assert torch.equal(token_table(tok, texts, 5), reference)
    tok.texts = 0
    fresh = _CountingTokenizer(train_wordpiece(texts[1:], 200, extra_words=["yes", "no"]))
    assert tokenizer_fingerprint(fresh) == tokenizer_fingerprint(tok)  # calls leave no trace
    first = cached_token_table(tok, texts, 5, data_dir=tmp_path, data_fingerprint="f0",
                               kind="items")
    assert torch.equal(first, reference) and tok.texts == 3
    assert len(list((tmp_path / CACHE_DIR).glob("tokens-items-w5-*.npy"))) == 1
    again = cached_token_table(tok, texts, 5, data_dir=tmp_path, data_fingerprint="f0",
                               kind="items")
    assert torch.equal(again, reference) and tok.texts == 3  # read back, not tokenised
    cached_token_table(tok, texts, 3, data_dir=tmp_path, data_fingerprint="f0", kind="items")
    assert tok.texts == 6  # another width is another table
    other = _CountingTokenizer(train_wordpiece(texts[1:] + ["zebra"], 200, extra_words=[]))
    cached_token_table(other, texts, 5, data_dir=tmp_path, data_fingerprint="f0", kind="items")
    assert other.texts == 3  # another tokenizer too
    assert len(list((tmp_path / CACHE_DIR).glob("*.npy"))) == 3
    # a data directory the cache cannot be written into still works (tokenised in memory)
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    table = cached_token_table(tok, texts, 5, data_dir=blocked, data_fingerprint="f0",
                               kind="items")
    assert torch.equal(table, reference)


def test_loadgen_writes_kuaisar_that_the_adapter_prepares(tmp_path):
    from gensr.data import load_data
    from gensr.data.adapters.kuaisar import CATEGORY_COLUMNS, REC_FIELDS, SRC_FIELDS
    from gensr.data.loadgen import PAPER, generate_kuaisar, shape_for
    from gensr.data.prepare import prepare

    raw = tmp_path / "raw"
    summary = generate_kuaisar(raw, 30_000, seed=3, users=60, user_features=True,
                               chunk_rows=4_000)  # several chunks per file
    shape = summary["shape"]
    assert summary["rows"]["rec_inter.csv"] + summary["rows"]["src_inter.csv"] == 30_000
    ratio = PAPER["rec_rows"] / (PAPER["rec_rows"] + PAPER["src_rows"])
    assert summary["rows"]["rec_inter.csv"] == round(30_000 * ratio)
    assert shape["items"] == round(PAPER["items"] * 30_000 / 19_665_161)
    rec = pl.read_csv(raw / "rec_inter.csv")
    src = pl.read_csv(raw / "src_inter.csv")
    items = pl.read_csv(raw / "item_features.csv", infer_schema=False)
    assert {f.name for f in REC_FIELDS} <= set(rec.columns)
    assert {f.name for f in SRC_FIELDS} <= set(src.columns)
    assert set(CATEGORY_COLUMNS) <= set(items.columns) and "caption" in items.columns
    assert (raw / "user_features.csv").is_file()
    assert rec.height == summary["rows"]["rec_inter.csv"]
    assert 0.4 < rec["click"].mean() < 0.6
    # long-tailed items: the top 1% of items hold far more than 1% of the rows
    counts = rec["item_id"].value_counts()["count"].sort(descending=True)
    assert counts.head(max(1, shape["items"] // 100)).sum() > 0.1 * rec.height
    # search sessions: several results each, several clicks in some
    per = src.group_by("search_session_id").agg(pl.len().alias("shown"),
                                                 (pl.col("click_cnt") > 0).sum().alias("clicks"))
    assert per["shown"].mean() > 2 and per["clicks"].max() >= 2
    assert 0.4 < (per["clicks"] > 0).mean() < 0.8
    assert src["keyword"].str.contains(r"^\[\d+(, \d+)*\]$").all()
    assert items["third_level_category_name_en"].is_in(["empty"]).any()
    # seeded: the same arguments write the same files
    generate_kuaisar(tmp_path / "again", 30_000, seed=3, users=60, user_features=True,
                     chunk_rows=4_000)
    for name in ("rec_inter.csv", "src_inter.csv", "item_features.csv"):
        assert (raw / name).read_bytes() == (tmp_path / "again" / name).read_bytes()

    out, report = prepare("kuaisar", raw, tmp_path / "data", n_negatives=9)
    data = load_data(out)
    assert report.counts["users"] > 20 and report.counts["items"] > 50
    assert report.counts["interactions"]["src"] > 0
    assert set(data.interactions["split"].unique()) == {"train", "valid", "test"}
    assert data.item_text[1].startswith("w") and " > " in "".join(data.item_category)
    with pytest.raises(DataError, match="not empty"):
        generate_kuaisar(raw, 30_000)
    with pytest.raises(DataError, match="at least 100"):
        shape_for(10)
