"""LightGCN pretraining of the CF view's frozen item table (``gensr pretrain-cf``).

What is learned from what:

* **Graph**: the distinct (user, item) pairs of the *training split's rec interactions* only
  (GenSR §4.1.1); search interactions and the valid/test splits never enter it.
* **Model**: torch_geometric's :class:`~torch_geometric.nn.models.LightGCN` (layer outputs
  averaged with weights 1/(L+1)) propagating on a sparse normalised adjacency, trained with
  mini-batched BPR (one uniform negative per positive edge, never an item the user interacted
  with in the training split, either behaviour) plus L2 on the batch's layer-0 embeddings,
  Adam.
* **Early stopping**: every ``eval_every`` epochs, Recall@20 under full ranking on the valid
  split's rec instances (each user's training items masked, never the target; the same rule
  as :func:`gensr.eval.protocol.evaluate_full`, on at most ``valid_max`` seeded instances);
  the best epoch's tables are kept, training stops after ``patience`` evaluations without a
  gain (never before ``min_epochs``: propagating the random initial vectors already scores
  well, and the first few BPR steps may dip below that before climbing past it).
* **Fallback**: items with no training rec interaction (search-only or cold items) and users
  with none get the **mean of the trained vectors** (items: of the trained items; users: of the
  trained users). Dot products with it are an "average item" score, never random noise; the
  card counts them. Row 0 (padding) is zeros.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from gensr.cf.graph import NegativeSampler, RecGraph
from gensr.cf.table import FORMAT, SUFFIX, CFTable, card_path
from gensr.config import update_config
from gensr.data.candidates import InteractedSet
from gensr.data.dataset import SRData, load_data
from gensr.errors import ConfigError, DataError, RunError
from gensr.metrics import rank_metrics
from gensr.outputs import check_output_path, writer_lock
from gensr.progress import progress as progress_bar
from gensr.tensor import pick_device

VALID_KS: tuple[int, ...] = (10, 20)
FALLBACK_RULE = "mean of the trained vectors"


@dataclass
class CFConfig:
    """Settings of ``gensr pretrain-cf`` (the CLI's defaults are these)."""

    dim: int = 64  # d_cf
    layers: int = 2  # LightGCN propagation layers
    epochs: int = 60  # at most; early stopping may end sooner
    lr: float = 0.02  # Adam
    batch_size: int = 4096  # positive edges per BPR step
    weight_decay: float = 1e-3  # L2 on the batch's layer-0 embeddings (LightGCN's lambda)
    patience: int = 10  # evaluations without a gain in valid R@20 before stopping
    min_epochs: int = 10  # never stop before this many epochs
    eval_every: int = 1  # epochs between validations
    valid_max: int = 20000  # seeded subset of valid rec instances for validation; 0 = all
    seed: int = 0

    def check(self) -> None:
        """Raise :class:`ConfigError` for values that cannot work."""
        for name in ("dim", "epochs", "batch_size", "patience", "eval_every", "min_epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.layers < 0:
            raise ConfigError(f"layers must be 0 or more, not {self.layers}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, not {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be 0 or more, not {self.weight_decay}")
        if self.valid_max < 0:
            raise ConfigError(f"valid_max must be 0 (all) or more, not {self.valid_max}")


# --- validation ----------------------------------------------------------------------------
class FullRankValidator:
    """Full-ranking Recall/NDCG@K on the rec instances of a split.

    Same rule as :func:`gensr.eval.protocol.evaluate_full`: item 0 and each user's
    training-split items (either behaviour) are masked, the target never is; ties are
    expected-rank (:func:`gensr.eval.metrics.rank_metrics`). ``max_instances`` (0 = all) keeps
    a seeded subset so validation stays affordable on catalogues of millions of items.
    """

    def __init__(self, data: SRData, split: str = "valid", *, max_instances: int = 0,
                 seed: int = 0, ks: tuple[int, ...] = VALID_KS) -> None:
        frame = data.candidates(split).filter(pl.col("task") == "rec")
        users = frame["user_id"].to_numpy().astype(np.int64)
        targets = frame["target_item"].to_numpy().astype(np.int64)
        self.total = len(users)
        if max_instances and len(users) > max_instances:
            keep = np.sort(np.random.default_rng(seed).choice(len(users), max_instances,
                                                              replace=False))
            users, targets = users[keep], targets[keep]
        self.users, self.targets = users, targets
        self.n_items = data.n_items
        self.ks = ks
        train = data.train()
        seen_u = train["user_id"].to_numpy().astype(np.int64)
        seen_i = train["item_id"].to_numpy().astype(np.int64)
        order = np.argsort(seen_u, kind="stable")
        self.seen_u, self.seen_i = seen_u[order], seen_i[order]

    def __len__(self) -> int:
        return len(self.users)

    @torch.no_grad()
    def evaluate(self, score_fn: Callable[[torch.Tensor], torch.Tensor],
                 device: torch.device | str = "cpu", batch_size: int | None = None
                 ) -> dict[str, float]:
        """Mean metrics; ``score_fn(users)`` returns (B, n_items + 1) scores."""
        if batch_size is None:  # keep one (B, n_items + 1) float64 block near 1 GiB at most
            batch_size = max(1, min(1024, (1 << 27) // (self.n_items + 1)))
        sums: dict[str, float] = {}
        for start in range(0, len(self), batch_size):
            u = self.users[start : start + batch_size]
            t = self.targets[start : start + batch_size]
            scores = score_fn(torch.from_numpy(u).to(device)).float().clone()
            scores[:, 0] = float("-inf")
            lo = np.searchsorted(self.seen_u, u, side="left")
            hi = np.searchsorted(self.seen_u, u, side="right")
            r = np.repeat(np.arange(len(u)), hi - lo)
            c = (np.concatenate([self.seen_i[a:b] for a, b in zip(lo, hi)]) if len(r)
                 else np.zeros(0, np.int64))
            keep = c != t[r]
            scores[torch.from_numpy(r[keep]).to(device),
                   torch.from_numpy(c[keep]).to(device)] = float("-inf")
            metrics = rank_metrics(scores, torch.from_numpy(t).to(device), ks=self.ks)
            for name, values in metrics.items():
                sums[name] = sums.get(name, 0.0) + float(values.sum())
        n = max(len(self), 1)
        out = {name: value / n for name, value in sums.items()}
        out["n"] = len(self)
        return out


# --- training ------------------------------------------------------------------------------
@dataclass
class FitResult:
    """What :func:`fit_lightgcn` returns (embeddings of the best epoch, on the CPU)."""

    user: torch.Tensor  # (graph.n_user_nodes, dim)
    item: torch.Tensor  # (graph.n_item_nodes, dim)
    best_epoch: int
    epochs_run: int
    best: dict[str, float] | None = None  # validation metrics of the best epoch
    history: list[dict[str, Any]] = field(default_factory=list)


def fit_lightgcn(
    graph: RecGraph,
    config: CFConfig,
    *,
    device: torch.device | str = "cpu",
    interacted: InteractedSet | None = None,
    validate: Callable[[torch.Tensor, torch.Tensor], dict[str, float]] | None = None,
    progress: bool = True,
) -> FitResult:
    """Train LightGCN with BPR on ``graph``; early-stop on ``validate``'s ``R@20``.

    ``validate(user_nodes, item_nodes)`` gets the propagated embeddings (compact order) and
    returns metrics with an ``"R@20"`` key; without it every epoch is trained and the last
    kept. ``interacted`` holds (canonical user, item) pairs never drawn as negatives.
    """
    with warnings.catch_warnings():  # torch_geometric's own import-time deprecations
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch_geometric.nn.models import LightGCN

    config.check()
    if graph.n_edges == 0:
        raise DataError("the graph has no edges: LightGCN has nothing to learn from")
    device = torch.device(device)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = LightGCN(graph.n_nodes, config.dim, config.layers, normalize=False).to(device)
    adj = graph.normalized_adjacency(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sampler = NegativeSampler(graph, interacted, rng)
    n_u = graph.n_user_nodes

    def snapshot() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            emb = model.get_embedding(adj)
        return emb[:n_u], emb[n_u:]

    best_score, best_epoch, stale = -1.0, 0, 0
    best_metrics: dict[str, float] | None = None
    best_user, best_item = None, None
    history: list[dict[str, Any]] = []
    n_batches = (graph.n_edges + config.batch_size - 1) // config.batch_size
    bar = progress_bar(range(1, config.epochs + 1), desc="lightgcn", enabled=progress)
    epoch = 0
    for epoch in bar:
        model.train()
        perm = rng.permutation(graph.n_edges)
        loss_sum = bpr_sum = 0.0
        for start in progress_bar(range(0, graph.n_edges, config.batch_size),
                                  total=n_batches, desc=f"epoch {epoch}", enabled=progress,
                                  leave=False):
            b = perm[start : start + config.batch_size]
            u = graph.edge_user[b]
            neg = sampler.sample(u)
            ut = torch.from_numpy(u).to(device)
            pt = torch.from_numpy(graph.edge_item[b] + n_u).to(device)
            nt = torch.from_numpy(neg + n_u).to(device)
            emb = model.get_embedding(adj)
            pos_rank = (emb[ut] * emb[pt]).sum(-1)
            neg_rank = (emb[ut] * emb[nt]).sum(-1)
            loss = model.recommendation_loss(pos_rank, neg_rank, node_id=torch.cat([ut, pt, nt]),
                                             lambda_reg=config.weight_decay)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(b)
            bpr_sum += float(F.softplus(neg_rank - pos_rank).detach().sum())
        row: dict[str, Any] = {"epoch": epoch, "loss": loss_sum / graph.n_edges,
                               "bpr": bpr_sum / graph.n_edges}
        if validate is not None and (epoch % config.eval_every == 0 or epoch == config.epochs):
            model.eval()
            metrics = validate(*snapshot())
            row["valid"] = metrics
            score = float(metrics["R@20"])
            if score > best_score:
                best_score, best_epoch, best_metrics, stale = score, epoch, metrics, 0
                u_emb, i_emb = snapshot()
                best_user, best_item = u_emb.cpu().clone(), i_emb.cpu().clone()
            else:
                stale += 1
            bar.set_postfix(loss=f"{row['loss']:.4f}", r20=f"{score:.4f}",
                            best=f"{best_score:.4f}@{best_epoch}")
        else:
            bar.set_postfix(loss=f"{row['loss']:.4f}")
        history.append(row)
        if validate is not None and stale >= config.patience and epoch >= config.min_epochs:
            break
    bar.close()
    if best_user is None or best_item is None:  # no validation: keep the last epoch
        u_emb, i_emb = snapshot()
        best_user, best_item, best_epoch = u_emb.cpu().clone(), i_emb.cpu().clone(), epoch
    return FitResult(user=best_user, item=best_item, best_epoch=best_epoch, epochs_run=epoch,
                     best=best_metrics, history=history)


def expand_tables(graph: RecGraph, user_nodes: torch.Tensor, item_nodes: torch.Tensor,
                  n_users: int, n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Full (n_items + 1, d) item and (n_users + 1, d) user tables in canonical id order.

    Rows of ids outside the graph get the mean of the trained rows (the fallback); row 0 is 0.
    """

    def expand(nodes: torch.Tensor, ids: np.ndarray, n: int) -> torch.Tensor:
        fill = nodes.mean(0) if len(nodes) else nodes.new_zeros(nodes.shape[1])
        table = fill.expand(n + 1, nodes.shape[1]).clone()
        table[torch.from_numpy(ids).to(nodes.device)] = nodes
        table[0] = 0.0
        return table.float()

    return (expand(item_nodes, graph.item_ids, n_items),
            expand(user_nodes, graph.user_ids, n_users))


def popularity_scores(data: SRData) -> torch.Tensor:
    """Training-split rec counts per item id: the ``pop`` scorer's rec scores."""
    return torch.from_numpy(data.popularity("rec")).float()


# --- the command ---------------------------------------------------------------------------
def pretrain_cf(
    data: SRData | str | Path,
    out: str | Path,
    config: CFConfig | None = None,
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Train LightGCN on ``data``'s training rec interactions and write the CF table to ``out``.

    ``out`` is a ``.safetensors`` path; the JSON card goes beside it (``.json``). ``options``
    override fields of ``config`` (default :class:`CFConfig`), e.g. ``epochs=20``. Returns the
    card: settings, graph sizes, fallback counts, the best epoch's valid figures next to
    popularity's, per-epoch history and times.
    """
    start = time.time()
    out = Path(out)
    if out.suffix != SUFFIX:
        raise ConfigError(f"--out must be a {SUFFIX} file (the card goes beside it as .json), "
                          f"not {out.name!r}")
    config = update_config(dataclasses.replace(config or CFConfig()), options)
    config.check()
    dev = device if isinstance(device, torch.device) else pick_device(device)
    if not isinstance(data, SRData):
        data = load_data(data)
    check_output_path(out.parent, RunError, option="--out")
    with writer_lock(out, RunError, what="CF table"):  # one writer of the table
        return _pretrain(data, out, config, dev, progress, start)


def _pretrain(data: SRData, out: Path, config: CFConfig, dev: torch.device, progress: bool,
              start: float) -> dict[str, Any]:
    """:func:`pretrain_cf` once its settings are checked and it holds the table's lock."""
    train = data.train()
    rec = train.filter(pl.col("behaviour") == "rec")
    if rec.height == 0:
        raise DataError("no training-split rec interactions: LightGCN has no graph to learn "
                        "from", file=str(data.path))
    graph = RecGraph.from_interactions(rec["user_id"].to_numpy(), rec["item_id"].to_numpy())
    interacted = InteractedSet(train["user_id"].to_numpy(), train["item_id"].to_numpy(),
                               data.n_items)

    validator = FullRankValidator(data, "valid", max_instances=config.valid_max,
                                  seed=config.seed)
    validate = None
    if len(validator):
        def validate(user_nodes: torch.Tensor, item_nodes: torch.Tensor) -> dict[str, float]:
            item, user = expand_tables(graph, user_nodes, item_nodes, data.n_users, data.n_items)
            return validator.evaluate(lambda u: user[u] @ item.T, dev)

    t0 = time.time()
    fit = fit_lightgcn(graph, config, device=dev, interacted=interacted, validate=validate,
                       progress=progress)
    train_time = time.time() - t0
    item, user = expand_tables(graph, fit.user, fit.item, data.n_users, data.n_items)

    pop_valid = None
    if len(validator):
        pop = popularity_scores(data).to(dev)
        pop_valid = validator.evaluate(lambda u: pop.expand(len(u), -1), dev)

    import torch_geometric

    from gensr import __version__ as gensr_version

    card: dict[str, Any] = {
        "format": FORMAT,
        "data_fingerprint": data.fingerprint,
        "data_dir": str(data.path),
        "data_name": data.name,
        "model": "LightGCN (torch_geometric.nn.models.LightGCN), BPR loss",
        "dim": config.dim,
        "layers": config.layers,
        "epochs": config.epochs,
        "epochs_run": fit.epochs_run,
        "best_epoch": fit.best_epoch,
        "config": dataclasses.asdict(config),
        "n_items": data.n_items,
        "n_users": data.n_users,
        "graph": {"source": "training-split rec interactions",
                  "rec_interactions": rec.height, "edges": graph.n_edges,
                  "users": graph.n_user_nodes, "items": graph.n_item_nodes},
        "fallback": {"rule": FALLBACK_RULE,
                     "items": data.n_items - graph.n_item_nodes,
                     "users": data.n_users - graph.n_user_nodes},
        "valid": {
            "protocol": "full ranking, rec instances, training items masked",
            "instances": len(validator), "instances_total": validator.total,
            "lightgcn": fit.best, "pop": pop_valid,
        },
        "history": fit.history,
        "device": str(dev),
        "train_time_s": round(train_time, 2),
        "time_s": round(time.time() - start, 2),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"gensr": gensr_version, "torch": torch.__version__,
                     "torch_geometric": torch_geometric.__version__},
    }
    CFTable(item=item.cpu(), user=user.cpu(), card=card).save(out)
    card["paths"] = {"table": str(out), "card": str(card_path(out))}
    return card
