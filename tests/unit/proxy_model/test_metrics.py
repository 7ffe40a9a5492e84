"""The one Kendall tau (evaluation and simulator) and its defined edge cases."""

import numpy as np
import pytest

from proxy_model.metrics import kendall_tau


def test_same_and_reversed_order():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([4, 3, 2, 1], [10, 20, 30, 40]) == pytest.approx(-1.0)


def test_ties_follow_tau_b():
    # pairs: (0,1) tied in pred; the other 5 concordant. tau-b = 5 / sqrt((6 - 1) * 6)
    assert kendall_tau([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(5 / np.sqrt(30))


@pytest.mark.parametrize("pred, truth", [
    ([5, 5, 5], [1, 2, 3]),  # a constant predictor orders nothing
    ([1, 2, 3], [7, 7, 7]),  # nothing to order
    ([3], [1]),              # one point: no pair
    ([], []),
])
def test_constant_side_or_fewer_than_two_points_is_zero(pred, truth):
    assert kendall_tau(pred, truth) == 0.0


def test_bad_input_raises():
    with pytest.raises(ValueError, match="one length"):
        kendall_tau([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="finite"):
        kendall_tau([1, float("nan")], [1, 2])


def test_max_n_scores_a_seeded_sample():
    rng = np.random.default_rng(0)
    truth = rng.random(3000)
    pred = truth + rng.normal(0, 0.3, 3000)
    full = kendall_tau(pred, truth)
    sampled = kendall_tau(pred, truth, max_n=1000, seed=1)
    assert sampled == kendall_tau(pred, truth, max_n=1000, seed=1)  # seeded
    assert sampled != full and sampled == pytest.approx(full, abs=0.05)
    assert kendall_tau(pred, truth, max_n=5000) == full  # below max_n: every point
