"""Paired significance tests (gensr.eval.significance) on hand-built cases with known p."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gensr.eval.significance import compare_to_reference, paired_test


def test_t_test_matches_a_hand_computation_with_two_degrees_of_freedom():
    # d = a - b = [1, 2, 3]: mean 2, sd 1, t = 2 / (1 / sqrt 3) = 2 sqrt 3, df = 2.
    # Student's t with 2 df has F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so the two-sided
    # p = 1 - t / sqrt(2 + t^2) = 1 - sqrt(12 / 14).
    a = np.array([0.5, 0.9, 0.7])
    b = a - np.array([1.0, 2.0, 3.0])
    result = paired_test(a, b)
    t = 2 * math.sqrt(3)
    assert result.statistic == pytest.approx(t)
    assert result.p_value == pytest.approx(1 - math.sqrt(12 / 14), abs=1e-12)
    assert result.p_value == pytest.approx(0.0741799, abs=1e-6)
    assert result.n == 3 and result.diff == pytest.approx(2.0)
    assert result.mean_a == pytest.approx(0.7) and result.mean_b == pytest.approx(-1.3)


def test_t_test_matches_a_hand_computation_with_four_degrees_of_freedom():
    # d = [1, 0, 2, 1, 1]: mean 1, sd sqrt(0.5), t = 1 / (sqrt(0.5) / sqrt 5) = sqrt 10.
    # Student's t with 4 df has the closed form
    # F(t) = 1/2 + (3/8) (t / sqrt(1 + t^2/4)) (1 - t^2 / (12 (1 + t^2/4))); two-sided p =
    # 2 (1 - F(t)) = 0.0341.
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    b = np.array([0.0, 2.0, 1.0, 3.0, 4.0])
    t = math.sqrt(10)
    s = 1 + t * t / 4
    cdf = 0.5 + 3 / 8 * (t / math.sqrt(s)) * (1 - t * t / (12 * s))
    result = paired_test(a, b)
    assert result.statistic == pytest.approx(t)
    assert result.p_value == pytest.approx(2 * (1 - cdf), abs=1e-12)
    assert result.p_value < 0.05  # 0.0341: significant at 5 %
    # the test is symmetric: swapping the systems flips t, not p
    swapped = paired_test(b, a)
    assert swapped.statistic == pytest.approx(-t) and swapped.p_value == pytest.approx(
        result.p_value)


def test_degenerate_differences():
    a = np.array([0.2, 0.4, 0.6, 0.8])
    same = paired_test(a, a.copy())
    assert same.p_value == 1.0 and same.statistic is None and same.diff == 0.0
    shifted = paired_test(a + 0.1, a)  # every instance better by the same amount
    assert shifted.p_value == 0.0 and shifted.statistic is None
    for test in ("t-test", "bootstrap"):
        with pytest.raises(ValueError, match="same 1-d shape"):
            paired_test(a, a[:3], test)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 2"):
        paired_test(a[:1], a[:1])
    with pytest.raises(ValueError, match="test must be"):
        paired_test(a, a, "wilcoxon")  # type: ignore[arg-type]


def test_bootstrap_known_cases():
    a = np.array([0.2, 0.4, 0.6, 0.8, 1.0])
    # equal differences: every resampled mean equals the observed one, none is as far from
    # it as 0 is, so p = 1 / (1 + n_boot)
    r = paired_test(a + 0.1, a, "bootstrap", n_boot=999)
    assert r.p_value == pytest.approx(1 / 1000) and r.statistic == pytest.approx(0.1)
    # no difference on average: p = 1
    assert paired_test(a, a[::-1].copy(), "bootstrap", n_boot=500).p_value == 1.0
    # seeded: the same p twice; it agrees with the t-test on a clear difference
    rng = np.random.default_rng(0)
    x = rng.random(400)
    y = x - 0.05 + 0.2 * rng.standard_normal(400)
    p1 = paired_test(x, y, "bootstrap", n_boot=2000, seed=3).p_value
    assert p1 == paired_test(x, y, "bootstrap", n_boot=2000, seed=3).p_value
    assert p1 < 0.01 and paired_test(x, y).p_value < 0.01
    noise = x + 0.2 * rng.standard_normal(400)
    assert paired_test(x, noise, "bootstrap", n_boot=2000).p_value > 0.05


def test_compare_to_reference_pairs_on_shared_instances():
    d = np.array([1.0, 0.0, 2.0, 1.0, 1.0])
    ref = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 9.0])  # row 5: only the reference has it
    values = {
        "gensr": {"rec": {"N@10": ref}, "src": {"N@10": np.array([0.5, 0.5, 0.7])}},
        "sasrec": {"rec": {"N@10": (ref[:5] - d)[::-1].copy()}},  # rows given in another order
        "tem": {"src": {"N@10": np.array([0.5, 0.5, 0.7])}},
    }
    rows = {"gensr": {"rec": np.arange(6), "src": np.array([10, 11, 12])},
            "sasrec": {"rec": np.arange(5)[::-1].copy()},
            "tem": {"src": np.array([10, 11, 12])}}
    out = compare_to_reference(values, rows, "gensr")
    assert set(out) == {"sasrec", "tem"} and set(out["sasrec"]) == {"rec"}
    r = out["sasrec"]["rec"]["N@10"]
    assert r["n"] == 5 and r["diff"] == pytest.approx(1.0)
    assert r["statistic"] == pytest.approx(math.sqrt(10))  # the 4-df case above
    assert out["tem"]["src"]["N@10"]["p_value"] == 1.0  # identical systems
    assert compare_to_reference(values, rows, "unisar") == {}  # reference absent: no tests


def test_seed_aware_test_where_the_per_instance_one_is_fooled():
    """A's seed average beats B's on every instance by a little (the paired per-instance
    test is certain), but A's three training seeds scatter widely around B: one of them is
    below B. The two-level bootstrap, which resamples seeds too, does not call it."""
    from gensr.eval.significance import paired_test, seed_bootstrap

    rng = np.random.default_rng(0)
    n = 400
    base = rng.uniform(0.2, 0.6, size=n)
    b = np.stack([base + rng.normal(0, 0.002, n) for _ in range(3)])  # steady seeds
    a = np.stack([base + 0.10, base - 0.07, base + 0.00])  # seed-level scatter, mean +0.01
    per_instance = paired_test(a.mean(0), b.mean(0))
    assert per_instance.diff == pytest.approx(0.01, abs=2e-3) and per_instance.p_value < 1e-6
    seeds = seed_bootstrap(a, b, n_boot=4000, seed=1)
    assert seeds.ci_low < 0 < seeds.ci_high and seeds.p_value > 0.05
    assert seeds.diff == pytest.approx(per_instance.diff)
    # a difference every seed agrees on stays significant
    steady = seed_bootstrap(b + 0.03, b, n_boot=4000, seed=1)
    assert steady.p_value < 0.01 and 0.02 < steady.ci_low < steady.ci_high < 0.04
    # one run each (deterministic scorers): the instances alone decide
    one = seed_bootstrap(a[:1], b[:1], n_boot=2000)
    assert one.n_seeds_a == one.n_seeds_b == 1 and one.p_value < 0.01
    with pytest.raises(ValueError, match="different instances"):
        seed_bootstrap(a, b[:, :10])


def test_compare_marks_by_the_seed_aware_test():
    from gensr.compare.report import decisive_p, significance_marks

    results = {"m": {"rec": {"N@10": {"p_value": 0.001, "seed_aware": {"p_value": 0.3}},
                             "R@10": {"p_value": 0.2, "seed_aware": {"p_value": 0.01}}}}}
    assert significance_marks(results, 0.05) == {"m": {"rec": {"R@10": "†"}}}
    assert decisive_p({"p_value": 0.02}) == 0.02  # tables without seed-aware results
