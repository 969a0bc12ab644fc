"""Paired significance tests over shared evaluation instances (model-agnostic).

Two systems scored on the same instances give paired per-instance values ``a`` and ``b``
(e.g. each instance's N@10, averaged over training seeds). The null hypothesis is that the
mean difference ``d = a - b`` is zero; both tests are two-sided.

``t-test``
    Student's paired t-test (:func:`scipy.stats.ttest_rel`): t = mean(d) / (sd(d)/√n),
    n − 1 degrees of freedom. When every difference is equal (to a relative 1e-12) the
    statistic is undefined: p = 1 if they are all 0, else p = 0.
``bootstrap``
    the paired bootstrap (Efron & Tibshirani 1993, §16.4; Koehn 2004 for ranking metrics):
    ``n_boot`` resamples of the instances with replacement, each giving a mean difference
    d*_b; under the null the resampled differences are centred on 0, so
    p = (1 + #{b : |d*_b − mean(d)| ≥ |mean(d)|}) / (1 + n_boot) (1 when mean(d) = 0, and
    1 / (1 + n_boot) when every difference is the same non-zero value).

Seed-aware (what ``compare`` marks with †): the per-instance tests above treat the training
seeds' average as fixed, so a difference that one lucky seed carries can look certain. The
**two-level bootstrap** (:func:`seed_bootstrap`; Davison & Hinkley 1997, §3.8 on hierarchical
data) resamples both sources of variation: each bootstrap draw picks every system's training
seeds with replacement (independently: seed ``s`` of one system has nothing to do with seed
``s`` of another) and the evaluation instances with replacement (shared: the instances are
paired), and takes the difference of the means. The 95% interval is the draws' 2.5th and
97.5th percentiles; p (two-sided) = min(1, 2 · (1 + #{draws on the far side of 0}) /
(1 + n_boot)). A system with one run (a deterministic scorer) contributes its one run to
every draw.

No multiple-comparison correction is applied: a table that tests one system against k others
reports k raw p-values (divide alpha by k for a Bonferroni reading).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

TestName = Literal["t-test", "bootstrap"]
TESTS: tuple[str, ...] = ("t-test", "bootstrap")
EPS = 1e-12  # relative tolerance below which differences count as zero / equal


@dataclass(frozen=True)
class PairedResult:
    """One paired comparison: means, their difference (a − b), the statistic and p."""

    test: str
    n: int
    mean_a: float
    mean_b: float
    diff: float
    statistic: float | None  # t (t-test; None when undefined) or mean(d) (bootstrap)
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_test(a: np.ndarray, b: np.ndarray, test: TestName = "t-test", *,
                n_boot: int = 10_000, seed: int = 0) -> PairedResult:
    """Two-sided paired test of mean(a) = mean(b) over the same instances (module doc)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values need the same 1-d shape, got {a.shape} and {b.shape}")
    if test not in TESTS:
        raise ValueError(f"test must be one of {TESTS}, not {test!r}")
    n = len(a)
    if n < 2:
        raise ValueError(f"a paired test needs at least 2 instances, got {n}")
    d = a - b
    mean = float(d.mean())
    scale = max(1.0, float(np.abs(d).max()))
    zero = abs(mean) <= EPS * scale  # no difference on average
    flat = float(np.ptp(d)) <= EPS * scale  # every instance differs by the same amount
    statistic: float | None
    if test == "t-test":
        if flat:  # no spread: t is undefined
            statistic, p = None, (1.0 if zero else 0.0)
        else:
            from scipy import stats

            res = stats.ttest_rel(a, b)
            statistic, p = float(res.statistic), float(res.pvalue)
    else:
        statistic = mean
        if zero:
            p = 1.0
        elif flat:
            p = 1 / (1 + n_boot)
        else:
            rng = np.random.default_rng(seed)
            extreme = 0
            for start in range(0, n_boot, 1000):  # bounded memory: 1000 resamples at a time
                m = min(1000, n_boot - start)
                means = d[rng.integers(0, n, size=(m, n))].mean(axis=1)
                extreme += int((np.abs(means - mean) >= abs(mean)).sum())
            p = (1 + extreme) / (1 + n_boot)
    if statistic is not None and not math.isfinite(statistic):
        statistic = None
    return PairedResult(test=test, n=n, mean_a=float(a.mean()), mean_b=float(b.mean()),
                        diff=mean, statistic=statistic, p_value=p)


@dataclass(frozen=True)
class SeedResult:
    """The seed-aware comparison of two systems: the difference of their means (a − b) over
    seeds and instances, its bootstrap 95% interval and two-sided p."""

    method: str
    n: int
    n_seeds_a: int
    n_seeds_b: int
    diff: float
    ci_low: float
    ci_high: float
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def seed_bootstrap(a: np.ndarray, b: np.ndarray, *, n_boot: int = 10_000, seed: int = 0,
                   level: float = 0.95) -> SeedResult:
    """The two-level bootstrap (module docstring) of (seeds × instances) arrays ``a`` and
    ``b`` over the same instances (columns)."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"the systems were scored on different instances: {a.shape} {b.shape}")
    n = a.shape[1]
    if n < 2:
        raise ValueError(f"a bootstrap needs at least 2 instances, got {n}")
    rng = np.random.default_rng(seed)
    diff = float(a.mean() - b.mean())
    draws = np.empty(n_boot)
    for start in range(0, n_boot, 500):  # bounded memory: 500 draws at a time
        m = min(500, n_boot - start)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=m)  # (m, n) instance weights
        wa = rng.multinomial(len(a), np.full(len(a), 1.0 / len(a)), size=m)  # (m, Sa)
        wb = rng.multinomial(len(b), np.full(len(b), 1.0 / len(b)), size=m)
        mean_a = ((a @ counts.T) * wa.T).sum(0) / (len(a) * n)
        mean_b = ((b @ counts.T) * wb.T).sum(0) / (len(b) * n)
        draws[start : start + m] = mean_a - mean_b
    tail = (1.0 - level) / 2
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    far = min(int((draws <= 0).sum()), int((draws >= 0).sum()))
    p = min(1.0, 2 * (1 + far) / (1 + n_boot))
    if abs(diff) <= EPS and np.ptp(draws) <= EPS:
        p = 1.0
    return SeedResult("two-level bootstrap", n, len(a), len(b), diff, float(low), float(high),
                      float(p))


def compare_to_reference(
    values: dict[str, dict[str, dict[str, np.ndarray]]],
    rows: dict[str, dict[str, np.ndarray]],
    reference: str,
    test: TestName = "t-test",
    *,
    n_boot: int = 10_000,
    seed: int = 0,
    per_seed: dict[str, dict[str, dict[str, np.ndarray]]] | None = None,
) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """``reference`` against every other system on each task and metric they share.

    ``values[system][task][metric]`` are per-instance values on the instances
    ``rows[system][task]`` (ids of the shared evaluation instances); two systems are paired
    on the instances both scored. Returns ``out[other][task][metric]`` = the
    :class:`PairedResult` of (reference − other) as a dict; with ``per_seed`` (the same
    values per training seed, (seeds, instances) arrays) also its ``seed_aware``
    :class:`SeedResult` (:func:`seed_bootstrap`)."""
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    if reference not in values:
        return out
    for other, per_task in values.items():
        if other == reference:
            continue
        for task, metrics in per_task.items():
            if task not in values[reference]:
                continue
            ref_rows, other_rows = rows[reference][task], rows[other][task]
            shared, i_ref, i_other = np.intersect1d(ref_rows, other_rows, assume_unique=True,
                                                    return_indices=True)
            if len(shared) < 2:
                continue
            for metric, other_values in metrics.items():
                if metric not in values[reference][task]:
                    continue
                result = paired_test(values[reference][task][metric][i_ref],
                                     other_values[i_other], test, n_boot=n_boot, seed=seed)
                entry = result.to_dict()
                if per_seed is not None:
                    entry["seed_aware"] = seed_bootstrap(
                        per_seed[reference][task][metric][:, i_ref],
                        per_seed[other][task][metric][:, i_other], n_boot=n_boot,
                        seed=seed).to_dict()
                out.setdefault(other, {}).setdefault(task, {})[metric] = entry
    return out
