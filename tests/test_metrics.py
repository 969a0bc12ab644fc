import math

import pytest
import torch

from gensr.metrics import rank_metrics


def test_single_positive_hand_computed():
    # positive at index 2 with score 0.5; two candidates above it -> rank 2 (0-based)
    scores = torch.tensor([[0.9, 0.7, 0.5, 0.1, 0.2]])
    m = rank_metrics(scores, torch.tensor([2]), ks=(1, 2, 3, 5))
    assert m["R@1"].item() == 0.0
    assert m["R@2"].item() == 0.0
    assert m["R@3"].item() == 1.0
    assert m["N@3"].item() == pytest.approx(1 / math.log2(4))
    assert m["N@5"].item() == pytest.approx(0.5)


def test_top_rank_gives_one():
    scores = torch.tensor([[0.1, 3.0, 0.2]])
    m = rank_metrics(scores, torch.tensor([1]), ks=(1,))
    assert m["R@1"].item() == 1.0 and m["N@1"].item() == 1.0


def test_constant_scorer_is_chance_not_one():
    scores = torch.zeros(7, 100)
    target = torch.tensor([0, 5, 17, 50, 98, 99, 3])
    m = rank_metrics(scores, target, ks=(1, 5, 10, 20))
    assert torch.allclose(m["R@5"], torch.full((7,), 0.05, dtype=torch.float64))
    assert torch.allclose(m["R@1"], torch.full((7,), 0.01, dtype=torch.float64))
    assert torch.allclose(m["R@20"], torch.full((7,), 0.20, dtype=torch.float64))
    expected_n5 = sum(1 / math.log2(r + 2) for r in range(5)) / 100
    assert m["N@5"][0].item() == pytest.approx(expected_n5)


def test_tie_rules():
    # positive tied with one other at the top: expected R@1 = 0.5
    scores = torch.tensor([[1.0, 1.0, 0.0]])
    target = torch.tensor([0])
    assert rank_metrics(scores, target, ks=(1,))["R@1"].item() == 0.5
    assert rank_metrics(scores, target, ks=(1,), ties="pessimistic")["R@1"].item() == 0.0
    assert rank_metrics(scores, target, ks=(1,), ties="optimistic")["R@1"].item() == 1.0
    # partial overlap of the tie group with the cut-off: g=1, e=2 -> ranks 1..3, K=2 -> 1/3
    scores = torch.tensor([[2.0, 1.0, 1.0, 1.0, 0.0]])
    m = rank_metrics(scores, torch.tensor([1]), ks=(2,))
    assert m["R@2"].item() == pytest.approx(1 / 3)
    assert m["N@2"].item() == pytest.approx((1 / math.log2(3)) / 3)


def test_nan_scores_rank_last():
    scores = torch.tensor([[float("nan"), 0.5, 0.2]])
    assert rank_metrics(scores, torch.tensor([0]), ks=(2,))["R@2"].item() == 0.0
