"""GenSR's parts: prompt assembly, views and masks, soft filter, InfoNCE, scoring, tying."""

import math

import numpy as np
import pytest
import torch

from gensr.data.batching import TrainSampler, eval_instances
from gensr.errors import ConfigError
from gensr.models.gensr import GenSR, GenSRConfig, PromptTemplate, SoftFilter, info_nce
from gensr.models.gensr.prompt import VECTOR_SLOTS, PromptBuilder

SMALL = dict(backbone="scratch-t5", scratch_d_model=32, scratch_heads=2, scratch_d_ff=64,
             scratch_layers=1, scratch_decoder_layers=1, scratch_vocab_size=600,
             max_his_len=8, item_text_tokens=4)


def _model(data, seed=0, **overrides) -> GenSR:
    torch.manual_seed(seed)
    cf = torch.randn(data.n_items + 1, 16)
    cf[0] = 0
    return GenSR(GenSRConfig(**{**SMALL, **overrides}), data, cf_table=cf)


def _train_batch(data, n=6, k=3):
    table, order = TrainSampler(data, k, seed=1).epoch(0)
    # make sure both tasks appear
    rec = order[table.task[order] == 0][: n // 2]
    src = order[table.task[order] == 1][: n - n // 2]
    return table.make_batch(data, np.concatenate([rec, src]), 8)


# --- prompt ---------------------------------------------------------------------------------
def _segments(template: PromptTemplate) -> list[str]:
    """The text segments T1..T5 between the vector slots (the query marked ``{query}``)."""
    out, current = [], ""
    for kind, value in template.pieces:
        if kind == "vector":
            out.append(current)
            current = ""
        else:
            current += value if kind == "text" else "{query}"
    return [*out, current]


def test_template_parsing_and_segments():
    cfg = GenSRConfig()
    rec = PromptTemplate.parse(cfg.rec_template, plural="books", singular="book",
                               needs_query=False)
    src = PromptTemplate.parse(cfg.src_template, plural="books", singular="book",
                               needs_query=True)
    for template in (rec, src):
        assert tuple(v for kind, v in template.pieces if kind == "vector") == VECTOR_SLOTS
    assert len(_segments(rec)) == 5 and len(_segments(src)) == 5
    assert "{query}" in _segments(src)[4] and "{query}" not in "".join(_segments(rec))
    assert "books" in _segments(rec)[0] and "{items}" not in "".join(_segments(rec))


@pytest.mark.parametrize("template,needs_query,message", [
    ("{cf_history} {sem_history} {cf_candidate}", False, "sem_candidate"),
    ("{cf_history} {cf_history} {sem_history} {cf_candidate} {sem_candidate}", False,
     "exactly once"),
    ("{cf_history} {sem_history} {cf_candidate} {sem_candidate}", True, "{query}"),
    ("{cf_history} {sem_history} {cf_candidate} {sem_candidate} {query}", False, "rec template"),
    ("{cf_history} {sem_history} {cf_candidate} {sem_candidate} {oops}", False, "unknown slot"),
])
def test_bad_templates_are_rejected(template, needs_query, message):
    with pytest.raises(ConfigError, match=message):
        PromptTemplate.parse(template, plural="x", singular="x", needs_query=needs_query)


def test_assembled_prompt_holds_every_segment_once_in_order(tiny_data):
    model = _model(tiny_data)
    tok = model.backbone.tokenizer
    batch = _train_batch(tiny_data)
    enc = model.encode_history(batch)
    for row in range(len(batch)):
        task = int(batch.task[row])
        template = model.prompts.templates[task]
        ids = enc.prompt_ids[row][enc.prompt_mask[row]].tolist()
        markers = [ids.index(PromptBuilder.slot_marker(k)) for k in range(4)]
        assert markers == sorted(markers)  # the four slots in order, once each
        assert all(ids.count(PromptBuilder.slot_marker(k)) == 1 for k in range(4))
        # the five text segments between them are exactly T1..T5 (query filled in)
        bounds = [-1, *markers, len(ids) - 1]  # last id is </s>
        query = tiny_data.query_text[int(batch.query[row])] if task == 1 else ""
        for i, segment in enumerate(_segments(template)):
            piece = ids[bounds[i] + 1 : bounds[i + 1]]
            expected = tok(segment.replace("{query}", query), add_special_tokens=False)
            assert piece == expected["input_ids"], (i, segment)
        assert ids[-1] == tok.eos_token_id


def test_vectors_are_spliced_at_their_slots(tiny_data):
    """Eq. 7: each candidate's copy of the prompt holds slot k's vector at marker k and the
    token embeddings everywhere else."""
    model = _model(tiny_data).eval()
    batch = _train_batch(tiny_data)
    with torch.no_grad():
        enc = model.encode_history(batch)
        vectors = model.slot_vectors(enc, batch.candidates)
        embeds, mask = model.prompt_embeddings(enc, vectors)
        tokens = model.backbone.embed(enc.prompt_ids.clamp(min=0))  # (B, T, d)
    b, c = batch.candidates.shape
    per_position = embeds.view(b, c, *embeds.shape[1:]).transpose(1, 2)  # (B, T, C, d)
    for k, slot in enumerate(VECTOR_SLOTS):
        at = enc.prompt_ids == PromptBuilder.slot_marker(k)
        assert (at.sum(1) == 1).all()
        assert torch.equal(per_position[at], vectors[slot])  # (B, C, d)
    text = enc.prompt_ids >= 0
    assert torch.equal(per_position[text], tokens[text][:, None].expand(-1, c, -1))
    assert torch.equal(mask, enc.prompt_mask.repeat_interleave(c, dim=0))


def test_query_changes_the_encoder_input(tiny_data):
    model = _model(tiny_data)
    batch = _train_batch(tiny_data)
    src_rows = torch.nonzero(batch.task == 1).flatten()
    one = batch.select(src_rows[:1])
    other = batch.select(src_rows[:1])
    other.query = torch.tensor([1 + int(one.query[0]) % tiny_data.n_queries])
    assert tiny_data.query_text[int(other.query[0])] != tiny_data.query_text[int(one.query[0])]
    e1, _ = model.prompt_embeddings(model.encode_history(one),
                                    model.slot_vectors(model.encode_history(one), one.candidates))
    e2, _ = model.prompt_embeddings(model.encode_history(other),
                                    model.slot_vectors(model.encode_history(other),
                                                       other.candidates))
    assert e1.shape != e2.shape or not torch.equal(e1, e2)


# --- views, filter, loss ----------------------------------------------------------------------
def test_shapes_and_masks(tiny_data):
    model = _model(tiny_data)
    batch = _train_batch(tiny_data)
    enc = model.encode_history(batch)
    b, length = batch.hist_item.shape
    assert enc.cf.shape == (b, length, 16)
    assert enc.sem.shape == (b, length * 4, 32)
    # semantic tokens of padded history positions are masked
    pad_positions = (~batch.hist_mask).repeat_interleave(4, dim=1)
    assert not enc.sem_mask[pad_positions].any()
    vectors = model.slot_vectors(enc, batch.candidates)
    assert all(v.shape == (b, batch.candidates.shape[1], 32) for v in vectors.values())


def test_soft_filter_ignores_padding_and_empty_history():
    torch.manual_seed(0)
    filt = SoftFilter(8, heads=2)
    cand = torch.randn(2, 3, 8)
    hist = torch.randn(2, 5, 8)
    mask = torch.tensor([[False, False, True, True, True], [False] * 5])
    out = filt(cand, hist, mask)
    changed = hist.clone()
    changed[0, :2] = 100.0  # padded positions must not matter
    assert torch.allclose(out, filt(cand, changed, mask))
    assert torch.equal(out[1], torch.zeros(3, 8))  # nothing to attend to
    weights = filt.attention(cand, hist, mask)
    assert torch.allclose(weights[0].sum(-1), torch.ones(2, 3))


def test_single_head_filter_is_bilinear():
    torch.manual_seed(0)
    filt = SoftFilter(4, heads=1, value_projection=False)
    cand, hist = torch.randn(1, 1, 4), torch.randn(1, 3, 4)
    w = filt.key.weight.T @ filt.query.weight  # h^T W e_c with W = W_k^T W_q
    scores = torch.stack([hist[0, j] @ w @ cand[0, 0] for j in range(3)]) / 2.0
    expected = torch.softmax(scores, 0) @ hist[0]
    assert torch.allclose(filt(cand, hist, torch.ones(1, 3, dtype=torch.bool))[0, 0], expected,
                          atol=1e-6)


def test_info_nce_matches_hand_computation():
    z_cf = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    z_sem = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    tau = 0.5
    cos = [[1.0, 1 / math.sqrt(2), 0.0],
           [0.0, 1 / math.sqrt(2), 1.0],
           [1 / math.sqrt(2), 1.0, 1 / math.sqrt(2)]]

    def direction(m):
        total = 0.0
        for i in range(3):
            row = [math.exp(m[i][j] / tau) for j in range(3)]
            total += -math.log(row[i] / sum(row))
        return total / 3

    transposed = [[cos[j][i] for j in range(3)] for i in range(3)]
    expected = 0.5 * (direction(cos) + direction(transposed))
    assert info_nce(z_cf, z_sem, tau).item() == pytest.approx(expected, rel=1e-6)


def test_gradients_reach_every_trainable_part_but_not_the_cf_table(tiny_data):
    model = _model(tiny_data, view_dropout=0.0)
    out = model.loss(_train_batch(tiny_data, n=8))
    assert "loss_cl" in out.logs
    out.loss.backward()
    for part in (model.cf_view.encoder, model.cf_view.position, model.semantic_view,
                 model.cf_filter, model.sem_filter, model.cf_projection, model.backbone):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), part
    assert not model.cf_view.cf_table.requires_grad
    assert "cf_view.cf_table" not in dict(model.named_parameters())
    assert "cf_view.cf_table" not in model.state_dict()


def test_history_reuse_equals_scoring_each_candidate_alone(tiny_data):
    model = _model(tiny_data).eval()
    table = eval_instances(tiny_data, "test")
    batch = table.make_batch(tiny_data, np.arange(4), 8)
    with torch.no_grad():
        together = model.score(batch)
        alone = torch.stack([
            model.score(_with_candidates(batch, batch.candidates[:, j : j + 1]))[:, 0]
            for j in range(0, 100, 9)
        ], dim=1)
    assert together.shape == (4, 100)
    assert torch.allclose(together[:, ::9], alone, atol=1e-5)
    assert torch.isfinite(together).all()


def _with_candidates(batch, cands):
    out = batch.select(torch.arange(len(batch)))
    out.candidates = cands
    return out


def test_ablation_switches_build_and_score(tiny_data):
    batch = _train_batch(tiny_data)
    for switch in ("use_cf_view", "use_semantic_view", "use_soft_filter", "use_contrastive"):
        model = _model(tiny_data, **{switch: False})
        out = model.loss(batch)
        assert torch.isfinite(out.loss)
        assert ("loss_cl" in out.logs) == (switch in ("use_soft_filter",))
    with pytest.raises(ConfigError):
        _model(tiny_data, use_cf_view=False, use_semantic_view=False)


def test_scratch_t5_head_is_untied(tiny_data):
    model = _model(tiny_data)
    t5 = model.backbone.model
    assert t5.lm_head.weight.data_ptr() != t5.shared.weight.data_ptr()
    assert not model.backbone.lm_head_tied
    assert model.backbone.yes_id != model.backbone.no_id


def test_save_load_gives_identical_scores(tiny_data, tiny_cf_path, tmp_path):
    from gensr.models.base import read_model_card

    torch.manual_seed(0)
    model = GenSR(GenSRConfig(**SMALL, cf_path=str(tiny_cf_path)), tiny_data).eval()
    model.save_pretrained(tmp_path / "run")
    assert read_model_card(tmp_path / "run")["model"] == "gensr"
    loaded = GenSR.from_pretrained(tmp_path / "run", tiny_data).eval()
    batch = eval_instances(tiny_data, "test").make_batch(tiny_data, np.arange(3), 8)
    with torch.no_grad():
        assert torch.equal(model.score(batch), loaded.score(batch))
    assert not loaded.backbone.lm_head_tied
    # the frozen CF table came from the file, aligned by item id
    from gensr.cf import CFTable

    assert torch.equal(loaded.cf_view.cf_table, CFTable.load(tiny_cf_path, tiny_data).item)


def test_analysis_hooks(tiny_data):
    model = _model(tiny_data)
    batch = _train_batch(tiny_data)
    rep = model.representation(batch)
    assert rep.shape == (*batch.candidates.shape, 32)
    shared = model.shared_parameters()
    assert shared and all("encoder.block.0" in name for name, _ in shared)


def test_default_templates_are_the_papers_wording_and_sets_are_named():
    from gensr.models.gensr.configuration import TEMPLATES, GenSRConfig, resolve_template

    config = GenSRConfig()
    assert config.rec_template.startswith("A user has given high ratings to the following "
                                          "{items}:")
    assert "would enjoy the {item} {cf_candidate}" in config.rec_template
    assert config.src_template.endswith('{sem_candidate} based on the query "{query}"? Answer '
                                        'with "Yes" or "No".')
    assert resolve_template("interacted", "src") == TEMPLATES["interacted"][1]
    assert resolve_template("my {cf_history}", "rec") == "my {cf_history}"
