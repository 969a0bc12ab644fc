"""MINE: mutual information neural estimation (Belghazi et al., ICML 2018).

The Donsker–Varadhan representation of KL divergence gives, for any function T (paper Eq. 12)::

    I(X; Y) >= E_P(X,Y)[T(x, y)] - log E_P(X)⊗P(Y)[exp T(x, y)]

A statistics network T (an MLP on the concatenation [x, y]) is trained to maximise the right
side: joint samples are the given (x, y) pairs, product-of-marginals samples pair each x with
the y of another row (a random permutation). The gradient of the log term is biased on a
mini-batch; MINE corrects it with a moving average: ∇ log E[e^T] ≈ E_batch[∇ e^T] / m, where
m is an exponential moving average of the mini-batch E[e^T] (here with Adam-style correction
of the EMA's zero start, and kept in log space so large T cannot overflow).

The bound is reported on **held-out** pairs: rows are split (by ``groups`` when given, so pairs
that share an instance never straddle the split) into a training part, a selection part that
picks the training step to keep (early stopping), and a report part on which the final
estimate is computed once, in nats. All randomness comes from ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from gensr.errors import ConfigError
from gensr.progress import progress as progress_bar


@dataclass
class MineConfig:
    """Settings of one MINE estimate (defaults suit a few thousand to ~100k pairs)."""

    steps: int = 1500  # optimizer steps of T
    batch_size: int = 512  # joint pairs per step (as many shuffled pairs)
    lr: float = 5e-4  # Adam
    hidden: int = 128  # width of T's two hidden layers
    ema_rate: float = 0.01  # weight of the newest mini-batch in the moving average of E[e^T]
    eval_every: int = 50  # steps between checks on the selection part (early stopping)
    report_fraction: float = 0.5  # share of rows (or groups) held out for the reported bound
    select_fraction: float = 0.2  # share of the remaining rows used to pick the step
    permutations: int = 8  # shuffles of y averaged in the marginal term of held-out bounds

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "hidden", "eval_every", "permutations"):
            if getattr(self, name) < 1:
                raise ConfigError(f"mine.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.ema_rate <= 1.0:
            raise ConfigError(f"mine.ema_rate must be in (0, 1], got {self.ema_rate}")
        for name in ("report_fraction", "select_fraction"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"mine.{name} must be in (0, 1), got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"mine.lr must be > 0, got {self.lr}")


@dataclass
class MineResult:
    """One estimate: the held-out bound (nats) and how it was reached."""

    estimate: float  # DV bound on the report part with the selected T
    train_bound: float  # the same bound on the training part (over-fitting shows as a gap)
    select_bound: float  # the bound on the selection part at the selected step
    best_step: int
    n_train: int
    n_select: int
    n_report: int
    curve: list[tuple[int, float, float]] = field(default_factory=list)  # (step, train EMA
    # of the mini-batch bound, selection bound)


class StatisticsNetwork(nn.Module):
    """T(x, y): an MLP on [x, y] with two ELU hidden layers and a scalar output."""

    def __init__(self, dim_x: int, dim_y: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim_x + dim_y, hidden), nn.ELU(),
            nn.Linear(hidden, hidden), nn.ELU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, y], dim=-1)).squeeze(-1)


def _log_mean_exp(t: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(t, dim=0) - math.log(t.shape[0])


def dv_bound(t_joint: torch.Tensor, t_marginal: torch.Tensor) -> torch.Tensor:
    """Eq. 12 on samples: mean T over joint pairs − log mean exp T over shuffled pairs."""
    return t_joint.mean() - _log_mean_exp(t_marginal.flatten())


def corrected_surrogate(t_joint: torch.Tensor, t_marginal: torch.Tensor,
                        log_moving_average: torch.Tensor | float) -> torch.Tensor:
    """What MINE maximises each step: its gradient is E_batch[∇T]_joint − E_batch[∇e^T]_marg
    / m, with m = exp(``log_moving_average``) (the moving average of E_batch[e^T]) held
    constant — the bias-corrected gradient of the DV bound."""
    log_m = torch.as_tensor(log_moving_average, dtype=t_marginal.dtype).detach()
    return t_joint.mean() - torch.exp(_log_mean_exp(t_marginal.flatten()) - log_m)


@torch.no_grad()
def _evaluate(net: StatisticsNetwork, x: torch.Tensor, y: torch.Tensor, permutations: int,
              gen: torch.Generator, chunk: int = 65536) -> float:
    """The DV bound of a fixed T on (x, y): joint term on all rows, marginal term on
    ``permutations`` random shuffles of y (a permutation pairs each x with another row's y)."""
    net.eval()
    joint = torch.cat([net(x[i:i + chunk], y[i:i + chunk]) for i in range(0, len(x), chunk)])
    marg = []
    for _ in range(permutations):
        perm = torch.randperm(len(y), generator=gen)
        ys = y[perm]
        marg.append(torch.cat([net(x[i:i + chunk], ys[i:i + chunk])
                               for i in range(0, len(x), chunk)]))
    net.train()
    return float(dv_bound(joint, torch.cat(marg)))


def split_rows(n: int, groups: np.ndarray | None, config: MineConfig, seed: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of the (train, select, report) parts; whole groups stay together."""
    rng = np.random.default_rng([seed, 1])
    if groups is None:
        groups = np.arange(n)
    groups = np.asarray(groups)
    if len(groups) != n:
        raise ConfigError(f"groups has {len(groups)} entries for {n} rows")
    uniq = rng.permutation(np.unique(groups))
    n_report = max(1, int(round(config.report_fraction * len(uniq))))
    rest = uniq[n_report:]
    n_select = max(1, int(round(config.select_fraction * len(rest))))
    if len(rest) - n_select < 1:
        raise ConfigError(f"MINE needs more data: {len(uniq)} groups cannot be split into "
                          "train, select and report parts")
    report_g, select_g, train_g = uniq[:n_report], rest[:n_select], rest[n_select:]
    part = lambda g: np.flatnonzero(np.isin(groups, g))  # noqa: E731
    return part(train_g), part(select_g), part(report_g)


def mine(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    *,
    seed: int = 0,
    config: MineConfig | None = None,
    groups: Sequence[int] | np.ndarray | None = None,
    progress: bool = False,
    desc: str = "MINE",
) -> MineResult:
    """Estimate I(X; Y) in nats from paired samples ``x`` (N, d_x) and ``y`` (N,) or (N, d_y).

    Trains T on one part of the rows with the bias-corrected (moving-average) gradient, keeps
    the step whose bound is highest on a selection part, and returns that T's bound on a
    held-out report part (see the module docstring). Inputs are used as given: standardise
    them first if their scales differ wildly.
    """
    config = config or MineConfig()
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    y = torch.as_tensor(np.asarray(y, dtype=np.float32))
    if x.dim() == 1:
        x = x[:, None]
    if y.dim() == 1:
        y = y[:, None]
    if x.shape[0] != y.shape[0]:
        raise ConfigError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ConfigError("MINE inputs hold NaN or infinite values")
    train_idx, select_idx, report_idx = split_rows(
        len(x), None if groups is None else np.asarray(groups), config, seed)
    if len(train_idx) < 2:
        raise ConfigError(f"MINE needs at least 2 training rows, got {len(train_idx)}")
    gen = torch.Generator().manual_seed(seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # T's initialisation
    net = StatisticsNetwork(x.shape[1], y.shape[1], config.hidden)
    torch.random.set_rng_state(torch_state)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    xt, yt = x[train_idx], y[train_idx]
    xs, ys = x[select_idx], y[select_idx]
    batch = min(config.batch_size, len(xt))

    log_ma = torch.tensor(-math.inf)  # log of the (uncorrected) EMA of E_batch[e^T]
    decay = 1.0 - config.ema_rate
    best = (-math.inf, 0, {k: v.clone() for k, v in net.state_dict().items()})
    curve: list[tuple[int, float, float]] = []
    running: float | None = None
    bar = progress_bar(range(1, config.steps + 1), desc=desc, enabled=progress, leave=False)
    for step in bar:
        rows = torch.randint(len(xt), (batch,), generator=gen)
        shuffled = torch.randint(len(xt), (batch,), generator=gen)
        t_joint = net(xt[rows], yt[rows])
        t_marg = net(xt[rows], yt[shuffled])  # x with the y of an independent row
        log_et = _log_mean_exp(t_marg)
        with torch.no_grad():
            log_ma = torch.logaddexp(log_ma + math.log(decay),
                                     log_et.detach() + math.log(config.ema_rate))
            log_ma_hat = log_ma - math.log(1.0 - decay ** step)  # zero-start correction
        surrogate = corrected_surrogate(t_joint, t_marg, log_ma_hat)
        optimizer.zero_grad(set_to_none=True)
        (-surrogate).backward()
        optimizer.step()
        bound = float(t_joint.mean().detach() - log_et.detach())
        running = bound if running is None else 0.95 * running + 0.05 * bound
        if step % config.eval_every == 0 or step == config.steps:
            sel = _evaluate(net, xs, ys, config.permutations, gen)
            curve.append((step, running, sel))
            if sel > best[0]:
                best = (sel, step, {k: v.clone() for k, v in net.state_dict().items()})
            bar.set_postfix(select=f"{sel:.3f}")
    bar.close()
    net.load_state_dict(best[2])
    report = _evaluate(net, x[report_idx], y[report_idx], config.permutations, gen)
    train = _evaluate(net, xt, yt, config.permutations, gen)
    return MineResult(estimate=report, train_bound=train, select_bound=best[0],
                      best_step=best[1], n_train=len(train_idx), n_select=len(select_idx),
                      n_report=len(report_idx), curve=curve)


def gaussian_mi(rho: float, dims: int = 1) -> float:
    """I(X; Y) of ``dims`` independent pairs of unit Gaussians with correlation ``rho``."""
    return -0.5 * dims * math.log(1.0 - rho * rho)
