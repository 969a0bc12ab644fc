"""gensr analyze: MINE on a known MI, the model-independent features, and the mi, space and
grad-conflict analyses on tiny synthetic data with GenSR, SASRec and a two-head stand-in."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gensr.analysis import (
    ConflictModel,
    InputFeatures,
    MIConfig,
    MineConfig,
    SpaceConfig,
    load_runs,
    mine,
    models_from_specs,
    run_grad_conflict,
    run_mi,
    run_space,
)
from gensr.analysis.common import rank_gauss, restrict_candidates, task_instances
from gensr.analysis.grad_conflict import task_gradients
from gensr.analysis.mine import corrected_surrogate, dv_bound, gaussian_mi
from gensr.analysis.space import separation
from gensr.data.batching import TrainSampler
from gensr.data.dataset import SRData
from gensr.errors import ConfigError
from gensr.models.base import ModelConfig, ModelOutput, SRModel
from gensr.train import TrainConfig, fit, train_run
from gensr.train.loop import make_optimizer, warmup_linear

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "analysis_gensr_tiny.yaml"
QUIET = ["progress=false"]


# --- a discriminative two-task stand-in (shared encoder + two heads, Eq. 1) ----------------
@dataclass
class StandInConfig(ModelConfig):
    max_his_len: int = 8
    hidden: int = 16


class StandIn(SRModel):
    """Shared encoder (self-attention over the history + an MLP over [user, query,
    candidate]) feeding a rec head and a search head; BCE on the labels."""

    name = "standin"
    config_class = StandInConfig

    def __init__(self, config: StandInConfig, data: SRData) -> None:
        super().__init__(config, data)
        h = config.hidden
        self.item = nn.Embedding(data.n_items + 1, h, padding_idx=0)
        self.query = nn.Embedding(data.n_queries + 1, h, padding_idx=0)
        self.attn = nn.MultiheadAttention(h, 2, batch_first=True)
        self.mix = nn.Linear(3 * h, h)
        self.heads = nn.ModuleList([nn.Linear(h, 1), nn.Linear(h, 1)])

    def encode(self, batch) -> torch.Tensor:
        x = self.item(batch.hist_item)
        mask = batch.hist_mask
        pad = ~mask
        pad[:, -1] = False  # never a row with every key masked
        y, _ = self.attn(x, x, x, key_padding_mask=pad)
        user = (y * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        cand = self.item(batch.candidates)
        b, c, _ = cand.shape
        z = torch.cat([user[:, None].expand(b, c, -1),
                       self.query(batch.query)[:, None].expand(b, c, -1), cand], dim=-1)
        return torch.tanh(self.mix(z))

    def representation(self, batch) -> torch.Tensor:
        return self.encode(batch)

    def score(self, batch) -> torch.Tensor:
        z = self.encode(batch)
        rec, src = self.heads[0](z).squeeze(-1), self.heads[1](z).squeeze(-1)
        return torch.where(batch.task[:, None] == 1, src, rec)

    def loss(self, batch) -> ModelOutput:
        return ModelOutput(F.binary_cross_entropy_with_logits(self.score(batch), batch.labels))

    def shared_parameters(self):
        return list(self.attn.named_parameters(prefix="attn"))


STANDIN_TRAIN = dict(max_steps=25, batch_size=32, lr=5e-3, warmup_steps=2, eval_every=1000,
                     eval_max_instances=20, patience=0, progress=False, device="cpu")


@pytest.fixture(scope="module")
def registry_with_standin():
    from gensr.models import registry

    mp = pytest.MonkeyPatch()
    mp.setitem(registry.MODELS, "standin", f"{__name__}:StandIn")
    yield
    mp.undo()


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory, tiny_data_dir, tiny_cf_path, registry_with_standin):
    """A tiny GenSR run, a SASRec run and two stand-in runs (two training seeds)."""
    root = tmp_path_factory.mktemp("analysis_runs")
    train_run(root / "gensr", "gensr", tiny_data_dir, config_path=TINY, cf_path=tiny_cf_path,
              sets=QUIET + ["max_steps=6"], log=lambda _: None)
    train_run(root / "sasrec", "sasrec", tiny_data_dir, log=lambda _: None,
              sets=QUIET + ["max_steps=10", "eval_max_instances=20", "device=cpu"])
    from gensr.data import load_data

    data = load_data(tiny_data_dir)
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = StandIn(StandInConfig(), data)
        fit(model, data, TrainConfig(seed=seed, **STANDIN_TRAIN), root / f"disc{seed}",
            log=lambda _: None)
    return root


# --- MINE ------------------------------------------------------------------------------------
def test_mine_recovers_the_mi_of_correlated_gaussians():
    rng = np.random.default_rng(3)
    rho, n = 0.9, 20000
    x = rng.standard_normal(n)
    y = rho * x + math.sqrt(1 - rho ** 2) * rng.standard_normal(n)
    truth = gaussian_mi(rho)  # -1/2 log(1 - rho^2) = 0.830 nats
    result = mine(x, y, seed=0, config=MineConfig(steps=1500, batch_size=512))
    assert abs(result.estimate - truth) < 0.1 * truth, (result.estimate, truth)
    assert result.n_report == n // 2 and result.n_train + result.n_select == n - n // 2


def test_mine_finds_nothing_between_independent_variables():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((4000, 3)), rng.standard_normal(4000)
    result = mine(x, y, seed=1, config=MineConfig(steps=300, batch_size=256))
    assert abs(result.estimate) < 0.05


def test_moving_average_corrects_the_gradient_of_the_log_term():
    t_joint = torch.tensor([0.5, 1.0, -0.2], requires_grad=True)
    t_marg = torch.tensor([0.1, -0.3, 0.7, 0.2], requires_grad=True)
    moving_average = 2.0
    corrected_surrogate(t_joint, t_marg, math.log(moving_average)).backward()
    assert torch.allclose(t_joint.grad, torch.full((3,), 1 / 3))
    # d/dT_i of -log E[e^T] would be -e^T_i / sum e^T; MINE uses the moving average instead
    assert torch.allclose(t_marg.grad, -torch.exp(t_marg.detach()) / (4 * moving_average))


def test_dv_bound_and_group_split():
    t_joint, t_marg = torch.tensor([1.0, 2.0]), torch.tensor([0.0, math.log(3.0)])
    assert float(dv_bound(t_joint, t_marg)) == pytest.approx(1.5 - math.log(2.0))
    from gensr.analysis.mine import split_rows

    groups = np.repeat(np.arange(50), 4)
    parts = split_rows(len(groups), groups, MineConfig(), seed=0)
    owners = [set(groups[p]) for p in parts]
    assert sum(len(p) for p in parts) == 200
    assert not (owners[0] & owners[1] or owners[0] & owners[2] or owners[1] & owners[2])
    with pytest.raises(ConfigError, match="NaN"):
        mine(np.array([0.0, np.nan, 1.0, 2.0]), np.zeros(4))


def test_rank_gauss_is_monotone_with_a_fixed_marginal():
    values = np.array([3.0, -1.0, 10.0, 3.0, 0.5])
    z = rank_gauss(values)
    assert z[2] > z[0] == z[3] > z[4] > z[1]
    assert np.allclose(rank_gauss(values * 100 + 7), z)  # scale-free


# --- features ------------------------------------------------------------------------------------
def test_restrict_candidates_keeps_the_target_and_stored_order(tiny_data):
    table = task_instances(tiny_data, "test", "src", 30)
    small = restrict_candidates(table, 5)
    assert small.candidates.shape == (len(table), 5)
    rows = np.arange(len(table))
    targets = table.candidates[rows, table.target_pos]
    assert (small.candidates[rows, small.target_pos] == targets).all()
    for i in range(len(table)):  # the others are the first 4 non-targets, in stored order
        others = [c for c in table.candidates[i] if c != targets[i]][:4]
        assert [c for c in small.candidates[i] if c != targets[i]] == others


def test_pair_features_are_model_independent_and_laid_out(tiny_data, tiny_cf_path):
    feats = InputFeatures.from_cf_path(tiny_data, tiny_cf_path, text_dim=8, his_len=6)
    d = feats.dims
    table = restrict_candidates(task_instances(tiny_data, "test", "rec", 10), 3)
    x = feats.pair_features(table)
    assert x.shape == (30, sum(d.values()))
    # candidate block = the candidate's CF row; query block = 0 for rec instances
    start = d["history_cf"]
    assert np.allclose(x[:, start:start + d["candidate_cf"]],
                       feats.item_cf[table.candidates.reshape(-1)])
    assert np.allclose(x[:, -d["query_text"]:], 0)
    src = restrict_candidates(task_instances(tiny_data, "test", "src", 10), 3)
    assert np.abs(feats.pair_features(src)[:, -d["query_text"]:]).sum() > 0
    inputs = feats.task_inputs(src)
    assert inputs.shape == (10, d["history_cf"] + d["history_text"])
    assert np.isfinite(inputs).all()


# --- mi ---------------------------------------------------------------------------------
def test_mi_end_to_end(runs_dir, tiny_cf_path, tmp_path):
    specs = [str(runs_dir / "gensr"), str(runs_dir / "sasrec"),
             f"disc={runs_dir / 'disc0'}", f"disc={runs_dir / 'disc1'}"]
    runs, data = load_runs(specs)
    assert [r.label for r in runs] == ["gensr", "sasrec", "disc", "disc"]
    feats = InputFeatures.from_cf_path(data, tiny_cf_path, text_dim=8)
    config = MIConfig(max_instances=40, candidates=5, mine_seeds=(0, 1),
                      mine=MineConfig(steps=100, batch_size=64, eval_every=50),
                      progress=False)
    summary = run_mi(runs, data, feats, tmp_path / "mi", config, log=lambda _: None)
    for name in ("mi.csv", "mi_estimates.csv", "mi_curves.csv", "mi.png", "mi.json"):
        assert (tmp_path / "mi" / name).stat().st_size > 0, name
    est = pl.read_csv(tmp_path / "mi" / "mi_estimates.csv")
    assert est.height == 4 * 2 * 2  # runs x tasks x MINE seeds
    sasrec_src = est.filter((pl.col("model") == "sasrec") & (pl.col("task") == "src"))
    assert sasrec_src["mi"].is_nan().all() and "does not serve" in sasrec_src["note"][0]
    ok = est.filter(pl.col("note").is_null() | (pl.col("note") == ""))
    assert ok["mi"].is_finite().all()
    disc = summary["summary"]["disc"]["rec"]
    assert disc["n_runs"] == 2 and disc["n_estimates"] == 4
    assert math.isfinite(disc["std_between_runs"])
    saved = json.loads((tmp_path / "mi" / "mi.json").read_text())
    assert saved["summary"]["sasrec"]["src"]["mean"] is None  # NaN -> null
    assert "candidate" in saved["definition"]["X"] and "model.score" in saved["definition"]["Y"]
    assert saved["pairs"]["rec"]["pairs"] == 40 * 5


def test_mi_needs_one_cf_table(runs_dir):
    from gensr.analysis import shared_cf_path

    runs, _ = load_runs([str(runs_dir / "sasrec")])
    with pytest.raises(ConfigError, match="--cf"):
        shared_cf_path(runs, None)


# --- space ------------------------------------------------------------------------------
def test_separation_measures_tell_apart_and_overlapping_clouds():
    rng = np.random.default_rng(0)
    task = np.repeat([0, 1], 150)
    apart = rng.standard_normal((300, 2)) + 6 * task[:, None]
    same = rng.standard_normal((300, 2))
    a = separation(apart, apart, task, folds=3, seed=0)
    s = separation(same, same, task, folds=3, seed=0)
    assert a["probe_acc"] > 0.97 and a["silhouette"] > 0.6 and a["kde_overlap"] < 0.1
    assert s["probe_acc"] < 0.65 and abs(s["silhouette"]) < 0.1 and s["kde_overlap"] > 0.9


def test_space_end_to_end(runs_dir, tiny_cf_path, tmp_path):
    runs, data = load_runs([str(runs_dir / "gensr"), f"disc={runs_dir / 'disc0'}"])
    feats = InputFeatures.from_cf_path(data, tiny_cf_path, text_dim=8)
    config = SpaceConfig(max_instances=40, perplexity=10, probe_folds=3, progress=False)
    summary = run_space(runs, data, feats, tmp_path / "space", config, log=lambda _: None)
    for name in ("space.png", "space_points.csv", "space_separation.csv", "space.json"):
        assert (tmp_path / "space" / name).stat().st_size > 0, name
    sep = pl.read_csv(tmp_path / "space" / "space_separation.csv")
    assert sep["method"].to_list() == ["t-SNE", "PCA", "PCA"]
    assert sep["probe_acc"].is_between(0, 1).all()
    points = pl.read_csv(tmp_path / "space" / "space_points.csv")
    assert points.height == 3 * 80 and set(points["task"]) == {"rec", "src"}
    assert summary["separation"][0]["n_rec"] == summary["separation"][0]["n_src"] == 40


def test_space_refuses_a_model_without_both_tasks(runs_dir, tiny_cf_path, tmp_path):
    runs, data = load_runs([str(runs_dir / "sasrec")])
    feats = InputFeatures.from_cf_path(data, tiny_cf_path, text_dim=8)
    with pytest.raises(ConfigError, match="does not serve"):
        run_space(runs, data, feats, tmp_path, SpaceConfig(progress=False))


# --- grad-conflict --------------------------------------------------------------------------------
def _standin_spec(lr: float = 5e-3) -> ConflictModel:
    return ConflictModel("disc", lambda data, seed: StandIn(StandInConfig(), data),
                         TrainConfig(lr=lr, warmup_steps=2, weight_decay=1e-3, grad_clip=1.0))


def test_task_gradients_match_a_hand_computation(tiny_data):
    torch.manual_seed(0)
    model = StandIn(StandInConfig(), tiny_data).eval()  # eval: no dropout to differ
    table, order = TrainSampler(tiny_data, 3, seed=0).epoch(0)
    batch = table.make_batch(tiny_data, order[:24], 8)
    params = [p for _, p in model.shared_parameters()]
    stats = task_gradients(model, batch, params)
    assert all(p.grad is None for p in model.parameters())  # autograd.grad: nothing stored
    grads = []
    for t in (0, 1):
        model.zero_grad()
        model.loss(batch.select((batch.task == t).nonzero().flatten())).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in params]))
    expected = F.cosine_similarity(grads[0], grads[1], dim=0)
    assert stats["cos"] == pytest.approx(float(expected), abs=1e-5)
    assert stats["n_rec"] + stats["n_src"] == 24


def test_grad_conflict_steps_like_the_trainer(tiny_data, tmp_path):
    """The measured run's weights equal a plain AdamW loop on the same batches: the extra
    per-task passes do not change training."""
    steps, bs = 3, 16
    spec, built = _standin_spec(), []

    def build(data, seed):
        built.append(spec.build(data, seed))
        return built[-1]

    run_grad_conflict(tiny_data, [ConflictModel("disc", build, spec.train)], tmp_path / "gc",
                      steps=steps, batch_size=bs, n_negatives=3, seed=5, progress=False,
                      log=lambda _: None)
    rows = pl.read_csv(tmp_path / "gc" / "grad_conflict.csv")
    assert rows.height == steps and rows["cos"].is_between(-1, 1).all()
    assert rows["lr"].to_list() == pytest.approx([5e-3 * warmup_linear(2, steps)(s)
                                                  for s in range(steps)])
    torch.manual_seed(5)
    model = StandIn(StandInConfig(), tiny_data)
    model.train()
    opt = make_optimizer([g for g in model.param_groups(1e-3) if g["params"]], 5e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_linear(2, steps))
    table, order = TrainSampler(tiny_data, 3, seed=5).epoch(0)
    for i, batch in enumerate(table.batches(tiny_data, bs, 8, order=order)):
        if i == steps:
            break
        opt.zero_grad()
        model.loss(batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    for (name, a), (_, b) in zip(model.state_dict().items(), built[0].state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_grad_conflict_with_gensr_and_the_stand_in(tiny_data_dir, tiny_data, tiny_cf_path,
                                                    tmp_path):
    specs = models_from_specs([f"gensr:{TINY}"], ["model.tau=0.1"], tiny_cf_path)
    summary = run_grad_conflict(tiny_data, specs + [_standin_spec()], tmp_path / "gc",
                                steps=4, batch_size=16, progress=False, log=lambda _: None)
    rows = pl.read_csv(tmp_path / "gc" / "grad_conflict.csv")
    assert rows["label"].to_list() == ["gensr"] * 4 + ["disc"] * 4
    finite = rows.filter(pl.col("cos").is_not_nan())
    assert finite.height >= 6 and finite["cos"].is_between(-1, 1).all()
    assert (tmp_path / "gc" / "grad_conflict.png").stat().st_size > 0
    g = summary["models"]["gensr"]
    assert g["shared_parameters"][0].endswith("SelfAttention.q.weight")
    assert g["train"]["batch_size"] == 16 and summary["models"]["disc"]["train"]["seed"] == 0
    # per-model and common --set
    with pytest.raises(ConfigError, match="no model"):
        models_from_specs(["sasrec"], ["model.tau=0.1"])
    assert models_from_specs(["sasrec", "gensr"], ["gensr:model.tau=0.3", "lr=0.01"],
                             tiny_cf_path)[0].train.lr == 0.01


def test_grad_conflict_refuses_a_single_task_model(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="does not serve"):
        run_grad_conflict(tiny_data, models_from_specs(["sasrec"]), tmp_path, steps=1,
                          progress=False, log=lambda _: None)


# --- the command line --------------------------------------------------------------------------
def test_mi_and_space_commands(runs_dir, tiny_cf_path, tmp_path):
    from typer.testing import CliRunner

    from gensr.cli import app

    runner = CliRunner()
    result = runner.invoke(app, [
        "analyze", "mi", str(runs_dir / "gensr"), f"rec-only={runs_dir / 'sasrec'}",
        "--cf", str(tiny_cf_path), "--max-instances", "20", "--candidates", "4", "--steps",
        "60", "--mine-seeds", "0", "--text-dim", "8", "--no-progress",
        "--out", str(tmp_path / "mi")])
    assert result.exit_code == 0, result.output
    assert "Search" in result.output and "rec-only" in result.output
    assert json.loads((tmp_path / "mi" / "mi.json").read_text())["runs"][1]["label"] == \
        "rec-only"
    result = runner.invoke(app, [
        "analyze", "space", str(runs_dir / "gensr"), "--max-instances", "20",
        "--perplexity", "5", "--text-dim", "8", "--no-progress", "--out",
        str(tmp_path / "space")])  # the CF table comes from the GenSR run
    assert result.exit_code == 0, result.output
    assert "KDE overlap" in result.output and (tmp_path / "space" / "space.png").exists()
