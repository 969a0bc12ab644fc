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


def compare_to_reference(
    values: dict[str, dict[str, dict[str, np.ndarray]]],
    rows: dict[str, dict[str, np.ndarray]],
    reference: str,
    test: TestName = "t-test",
    *,
    n_boot: int = 10_000,
    seed: int = 0,
) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """``reference`` against every other system on each task and metric they share.

    ``values[system][task][metric]`` are per-instance values on the instances
    ``rows[system][task]`` (ids of the shared evaluation instances); two systems are paired
    on the instances both scored. Returns ``out[other][task][metric]`` = the
    :class:`PairedResult` of (reference − other) as a dict."""
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
                out.setdefault(other, {}).setdefault(task, {})[metric] = result.to_dict()
    return out
