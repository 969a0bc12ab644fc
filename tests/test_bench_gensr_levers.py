"""benchmarks/gensr_levers.py: the one-lever-on-top pair table on a hand-built case."""

import sys
from pathlib import Path

import polars as pl
import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def levers():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gensr_levers
    finally:
        sys.path.pop(0)
    return gensr_levers


def test_pair_table_gives_the_change_and_the_paired_test(levers):
    base = [0.0, 0.5, 1.0, 0.2, 0.3, 0.0]
    mine = [1.0, 0.5, 1.0, 0.6, 0.3, 0.1]
    instances = pl.DataFrame({
        "task": ["rec"] * 3 + ["src"] * 3,
        "gensr-800/N@10": mine, "gensr-nomatch/N@10": base,
    })
    (row,) = levers.pair_table(instances, ["gensr-paper", "gensr-nomatch", "gensr-800"])
    assert (row["variant"], row["base"]) == ("gensr-800", "gensr-nomatch")
    rec, src = row["tasks"]["rec"], row["tasks"]["src"]
    assert rec["N@10 delta"] == pytest.approx(1.0 / 3, abs=1e-4)
    assert src["base N@10"] == pytest.approx(0.1667, abs=1e-4)
    assert src["N@10"] == pytest.approx(1.0 / 3, abs=1e-4)
    expected = stats.ttest_rel(mine[3:], base[3:]).pvalue
    assert src["N@10 p"] == pytest.approx(expected)
    # a pair whose base did not run is left out; the markdown names the pair
    assert levers.pair_table(instances, ["gensr-paper", "gensr-800"]) == []
    md = levers.markdown({"instances": {"rec": 3, "src": 3}, "candidates": "uniform",
                          "seeds": [0], "rows": {}, "pairs": [row], "threads": "t",
                          "created": "c"})
    assert "`gensr-800` vs `gensr-nomatch`" in md and "+0.3333" in md
