"""gensr's GenSR levers (issue 15): candidate text in the prompt, a trainable item embedding,
a behaviour marker. Off, they leave the paper's model; on, they do what their docs say."""

import json

import pytest
import torch

from gensr.errors import ConfigError
from gensr.models.gensr import GenSR, GenSRConfig, PromptTemplate
from gensr.models.gensr.prompt import CANDIDATE_TEXT_MARKER, PromptBuilder
from test_gensr_model import SMALL as MODEL_SMALL
from test_gensr_model import _model as small_model
from test_gensr_model import _train_batch as _batch

NO_DROPOUT = {"view_dropout": 0.0, "scratch_dropout": 0.0}  # scores comparable in train mode
SMALL = {**MODEL_SMALL, **NO_DROPOUT}


def _model(data, **overrides) -> GenSR:
    """test_gensr_model's small GenSR (seed 0, random CF table), without dropout."""
    return small_model(data, **{**NO_DROPOUT, **overrides})


def test_levers_are_off_by_default():
    cfg = GenSRConfig()
    assert (cfg.candidate_text_len, cfg.item_embedding, cfg.behaviour_marker) == (0, False, False)


def test_candidate_text_slot_is_placed_after_sem_candidate_or_where_written():
    template = "{cf_history} {sem_history} {cf_candidate} {sem_candidate} end"
    parsed = PromptTemplate.parse(template, plural="x", singular="x", needs_query=False,
                                  candidate_text=True)
    kinds = [k if k != "vector" else v for k, v in parsed.pieces]
    assert kinds.index("candidate_text") == kinds.index("sem_candidate") + 1
    written = "{cf_history} {candidate_text} {sem_history} {cf_candidate} {sem_candidate}"
    parsed = PromptTemplate.parse(written, plural="x", singular="x", needs_query=False,
                                  candidate_text=True)
    kinds = [k if k != "vector" else v for k, v in parsed.pieces]
    assert kinds.count("candidate_text") == 1
    assert kinds.index("candidate_text") < kinds.index("sem_history")
    with pytest.raises(ConfigError, match="candidate_text_len"):  # slot without the lever
        PromptTemplate.parse(written, plural="x", singular="x", needs_query=False)


def test_candidate_text_is_spliced_with_its_own_mask(tiny_data):
    n = 5
    model = _model(tiny_data, candidate_text_len=n).eval()
    batch = _batch(tiny_data)
    with torch.no_grad():
        enc = model.encode_history(batch)
        vectors = model.slot_vectors(enc, batch.candidates)
        embeds, mask = model.prompt_embeddings(enc, vectors)
    b, c = batch.candidates.shape
    at = enc.prompt_ids == CANDIDATE_TEXT_MARKER
    assert (at.sum(1) == n).all()
    # the n positions follow the sem_candidate slot directly
    sem_at = (enc.prompt_ids == PromptBuilder.slot_marker(3)).int().argmax(1)
    first = at.int().argmax(1)
    assert torch.equal(first, sem_at + 1)
    tokens = model.candidate_tokens[batch.candidates]  # (B, C, n)
    expected = model.backbone.embed(tokens)
    per = embeds.view(b, c, *embeds.shape[1:])
    masks = mask.view(b, c, -1)
    for row in range(b):
        cols = torch.nonzero(at[row]).squeeze(1)
        assert torch.equal(per[row][:, cols], expected[row])
        assert torch.equal(masks[row][:, cols], tokens[row] != model.backbone.pad_id)
    # the item's own tokens: the first n of its text
    item = int(batch.candidates[0, 0])
    text_ids = model.backbone.tokenizer(tiny_data.item_text[item], add_special_tokens=False,
                                        truncation=True, max_length=n)["input_ids"]
    assert tokens[0, 0, : len(text_ids)].tolist() == text_ids


def test_candidate_text_scores_do_not_depend_on_the_other_candidates(tiny_data):
    """Per-candidate masks: a candidate's score is the same whatever its neighbours are."""
    model = _model(tiny_data, candidate_text_len=6).eval()
    batch = _batch(tiny_data)
    with torch.no_grad():
        full = model.score(batch)
        batch.candidates = batch.candidates.flip(1)
        flipped = model.score(batch)
    assert torch.allclose(full, flipped.flip(1), atol=1e-6)
    plain = _model(tiny_data).eval()
    with torch.no_grad():
        assert not torch.allclose(plain.score(batch), flipped)  # the text reaches the score


@pytest.mark.parametrize("lever", ["item_embedding", "behaviour_marker"])
def test_zero_initialised_levers_start_as_the_paper_model_and_then_learn(tiny_data, lever):
    batch = _batch(tiny_data)
    paper, model = _model(tiny_data).eval(), _model(tiny_data, **{lever: True}).eval()
    with torch.no_grad():
        assert torch.allclose(paper.score(batch), model.score(batch), atol=1e-6)
    new = [p for n, p in model.named_parameters()
           if n.startswith(("item_embedding", "cf_behaviour", "sem_behaviour"))]
    assert new and all(float(p.detach().abs().sum()) == 0 for p in new)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.loss(batch).loss.backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in new)
    optimizer.step()
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(paper.score(batch), model.score(batch), atol=1e-6)


def test_behaviour_marker_tells_rec_from_search_history(tiny_data):
    model = _model(tiny_data, behaviour_marker=True).eval()
    with torch.no_grad():
        model.cf_behaviour.weight[1:].normal_()
        model.sem_behaviour.weight[1:].normal_()
    batch = _batch(tiny_data)
    with torch.no_grad():
        before = model.score(batch)
        swapped = batch.hist_behaviour.clone()
        swapped[swapped > 0] = 3 - swapped[swapped > 0]  # rec <-> search
        batch.hist_behaviour = swapped
        after = model.score(batch)
    assert not torch.allclose(before, after)


def test_levers_survive_save_and_load(tiny_data, tiny_cf_path, tmp_path):
    torch.manual_seed(0)
    model = GenSR(GenSRConfig(**SMALL, cf_path=str(tiny_cf_path), candidate_text_len=4,
                              item_embedding=True, behaviour_marker=True), tiny_data).eval()
    with torch.no_grad():
        model.item_embedding.weight[1:].normal_()
    batch = _batch(tiny_data)
    with torch.no_grad():
        expected = model.score(batch)
    model.save_pretrained(tmp_path / "run")
    stored = json.loads((tmp_path / "run" / "model.json").read_text())
    assert '"candidate_text_len": 4' in json.dumps(stored)
    loaded = GenSR.from_pretrained(tmp_path / "run", tiny_data).eval()
    with torch.no_grad():
        assert torch.allclose(loaded.score(batch), expected, atol=1e-6)


@pytest.mark.parametrize("field_name", ["category", "category+text"])
def test_candidate_text_field_picks_the_item_text_it_names(tiny_data, field_name):
    n = 6
    model = _model(tiny_data, candidate_text_len=n, candidate_text_field=field_name)
    tok = model.backbone.tokenizer
    item = next(i for i in range(1, tiny_data.n_items + 1) if tiny_data.item_category[i])
    text = tiny_data.item_category[item]
    if field_name == "category+text":
        text = f"{text}. {tiny_data.item_text[item]}"
    ids = tok(text, add_special_tokens=False, truncation=True, max_length=n)["input_ids"]
    assert model.candidate_tokens[item, : len(ids)].tolist() == ids
    assert model.candidate_tokens.shape == (tiny_data.n_items + 1, n)
    with pytest.raises(ConfigError, match="candidate_text_field"):
        GenSRConfig(candidate_text_field="title")


def test_query_match_needs_candidate_text():
    with pytest.raises(ConfigError, match="candidate_text_len"):
        GenSRConfig(query_match=True)
    assert GenSRConfig(query_match=True, candidate_text_len=4).query_match


def test_query_match_marks_exactly_the_candidate_tokens_found_in_the_query(tiny_data):
    n = 8
    model = _model(tiny_data, candidate_text_len=n, candidate_text_field="category+text",
                   query_match=True).eval()
    plain = _model(tiny_data, candidate_text_len=n, candidate_text_field="category+text").eval()
    batch = _batch(tiny_data)
    assert (batch.task == 1).any() and (batch.task == 0).any()
    with torch.no_grad():  # a distinct, non-zero match vector, so any stray addition shows
        model.query_match.copy_(torch.arange(model.backbone.d_model, dtype=torch.float) + 1.0)
        enc = model.encode_history(batch)
        got = model.slot_vectors(enc, batch.candidates)["candidate_text"]
        base = plain.slot_vectors(plain.encode_history(batch), batch.candidates)
    pad = model.backbone.pad_id
    text = model.candidate_tokens[batch.candidates]  # (B, C, n)
    matches = 0
    for row in range(len(batch)):
        query = set(model.query_tokens[int(batch.query[row])].tolist()) if batch.task[row] == 1 \
            else set()
        for c in range(batch.candidates.shape[1]):
            for k in range(n):
                token = int(text[row, c, k])
                hit = token != pad and token in query
                matches += hit
                expected = base["candidate_text"][row, c, k] + (model.query_match if hit else 0)
                assert torch.allclose(got[row, c, k], expected, atol=1e-6)
    assert matches > 0  # the tiny data's queries share words with their items' categories
    assert (enc.query_tokens[batch.task == 0] == pad).all()  # rec: nothing to match


def test_query_match_starts_as_the_text_model_and_then_learns(tiny_data):
    kw = {"candidate_text_len": 8, "candidate_text_field": "category+text"}
    batch = _batch(tiny_data)
    text, model = _model(tiny_data, **kw).eval(), _model(tiny_data, **kw, query_match=True).eval()
    with torch.no_grad():
        assert torch.allclose(text.score(batch), model.score(batch), atol=1e-6)
    model.train()
    model.loss(batch).loss.backward()
    assert float(model.query_match.grad.abs().sum()) > 0
    torch.optim.Adam([model.query_match], lr=1e-2).step()
    model.eval()
    with torch.no_grad():
        moved = (text.score(batch) - model.score(batch)).abs()
    assert float(moved[batch.task == 1].max()) > 1e-6  # search scores change ...
    assert float(moved[batch.task == 0].max()) == 0.0  # ... rec scores cannot


def test_query_match_reads_queries_added_after_training(tiny_data):
    model = _model(tiny_data, candidate_text_len=8, candidate_text_field="category+text",
                   query_match=True).eval()
    item = next(i for i in range(1, tiny_data.n_items + 1) if tiny_data.item_category[i])
    words = tiny_data.item_category[item]
    (qid,) = model.add_queries([f"{words} zzunseenzz"])
    rows = model.query_tokens.padded(torch.tensor([qid, 0]))
    assert rows.shape == (2, model.query_tokens.table.shape[1])
    row = model.query_tokens[qid]
    assert rows[0, : len(row)].tolist() == row.tolist()
    assert (rows[1] == model.backbone.pad_id).all()
