"""pass@k, mean and standard error against hand-computed values (and lm-eval where installed)."""

import math

import pytest

from layerprune.errors import UsageError
from layerprune.evaluation.metrics import mean, pass_at_k, sample_stderr


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
        (4, 1, 2, 1 - 3 / 6),  # 1 - C(3,2)/C(4,2)
        (10, 3, 1, 0.3),  # pass@1 = c / n
        (6, 2, 3, 1 - 4 / 20),  # 1 - C(4,3)/C(6,3)
        (3, 3, 1, 1.0),
        (3, 0, 2, 0.0),
        (5, 3, 3, 1.0),  # n - c < k: every 3-subset holds a correct sample
        (1, 1, 1, 1.0),  # greedy decoding: pass@1 is just solved / not solved
        (1, 0, 1, 0.0),
    ],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_is_stable_for_large_n():
    # The binomials here have ~40 digits; the product form must agree with exact integers.
    exact = 1 - math.comb(187, 10) / math.comb(200, 10)
    assert pass_at_k(200, 13, 10) == pytest.approx(exact, rel=1e-12)
    assert 0.0 <= pass_at_k(1000, 1, 100) <= 1.0
    assert pass_at_k(1000, 1, 100) == pytest.approx(0.1, rel=1e-12)  # one correct sample: k / n


@pytest.mark.parametrize("n, c, k", [(0, 0, 1), (3, 4, 1), (3, -1, 1), (3, 1, 0), (3, 1, 4)])
def test_pass_at_k_rejects_impossible_inputs(n, c, k):
    with pytest.raises(UsageError):
        pass_at_k(n, c, k)


def test_mean_and_stderr_hand_computed():
    values = [2, 4, 4, 4, 5, 5, 7, 9]  # mean 5, sum of squares 32, var_ddof1 = 32/7
    assert mean(values) == 5.0
    assert sample_stderr(values) == pytest.approx(math.sqrt(32 / 7 / 8), rel=1e-12)
    assert sample_stderr([1, 0, 1, 1]) == pytest.approx(0.25, rel=1e-12)  # var 0.25, n 4
    assert mean([0.1] * 10) == 0.1  # fsum: no drift


def test_stderr_of_too_few_values_is_nan_and_mean_of_none_raises():
    assert math.isnan(sample_stderr([1.0]))
    assert math.isnan(sample_stderr([]))
    with pytest.raises(ValueError):
        mean([])


def test_stderr_matches_lm_eval():
    lm_metrics = pytest.importorskip("lm_eval.api.metrics")
    values = [0, 1, 1, 0, 1, 1, 1, 0, 0, 1, 0.5]
    assert sample_stderr(values) == pytest.approx(lm_metrics.mean_stderr(values), rel=1e-12)
    assert mean(values) == pytest.approx(lm_metrics.mean(values), rel=1e-12)
