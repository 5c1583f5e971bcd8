"""The paired bootstrap against exact bootstrap distributions worked out by hand (tiny cases)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from gream.paired import Interval, align, coverage_bootstrap, example_keys, paired_bootstrap


def exact_percentiles(diff: list[float], level: float = 0.95) -> tuple[float, float]:
    """Percentiles of the exact bootstrap distribution of the mean: every one of the n^n equally
    likely resamples listed in a plain loop (the smallest value whose CDF reaches each tail)."""
    n = len(diff)
    means = sorted(sum(diff[i] for i in idx) / n for idx in itertools.product(range(n), repeat=n))
    lo = means[int(np.ceil((1 - level) / 2 * len(means))) - 1]
    hi = means[int(np.ceil((1 - (1 - level) / 2) * len(means))) - 1]
    return lo, hi


def test_four_users_one_hit_is_no_difference():
    # A hit for user 0 only: the resampled mean is (copies of user 0) / 4, Binomial(4, 1/4) copies:
    # P = 81, 108, 54, 12, 1 (/256) for 0..4 copies, cumulative 0.316, 0.738, 0.949, 0.996, 1. The
    # 2.5% point is 0 and the 97.5% point is 3/4, so the interval [0, 0.75] holds 0.
    diff = np.array([1.0, 0.0, 0.0, 0.0])
    (iv,) = paired_bootstrap(diff, np.arange(4), resamples=4000)
    assert (iv.diff, iv.low, iv.high) == (0.25, 0.0, 0.75)
    assert (iv.low, iv.high) == exact_percentiles([1.0, 0.0, 0.0, 0.0])
    assert iv.verdict == "no difference"


def test_mixed_signs_match_the_exact_distribution():
    diff = [1.0, 0.5, -0.5, 1.0]
    (iv,) = paired_bootstrap(np.array(diff), np.array([10, 11, 12, 13]), resamples=4000)
    assert iv.diff == pytest.approx(0.5)
    assert (iv.low, iv.high) == pytest.approx(exact_percentiles(diff))  # (-0.125, 1.0)
    assert iv.verdict == "no difference"


def test_clear_difference_has_a_sign():
    rng = np.random.default_rng(1)
    diff = np.stack([rng.binomial(1, 0.3, 400) * 1.0, -rng.binomial(1, 0.3, 400) * 1.0], axis=1)
    up, down = paired_bootstrap(diff, np.arange(400))
    assert up.low > 0 and up.verdict == "higher" and down.high < 0 and down.verdict == "lower"
    assert Interval(0.0, 0.0, 0.0).verdict == "no difference"  # identical models


def test_users_with_several_examples_are_resampled_together():
    # User 7 owns two examples (differences 1 and 0), user 9 one (0). Resampling the 2 users: (7, 7)
    # gives 2/4, (7, 9) and (9, 7) give 1/3, (9, 9) gives 0, with probabilities 1/4, 1/2, 1/4.
    (iv,) = paired_bootstrap(np.array([1.0, 0.0, 0.0]), np.array([7, 7, 9]), resamples=4000)
    assert iv.diff == pytest.approx(1 / 3) and (iv.low, iv.high) == (0.0, 0.5)


def test_same_seed_same_interval_and_bad_input():
    diff, users = np.linspace(-1, 1, 50), np.arange(50)
    assert paired_bootstrap(diff, users) == paired_bootstrap(diff, users)
    with pytest.raises(ValueError, match="one user per example"):
        paired_bootstrap(np.zeros(3), np.arange(2))
    with pytest.raises(ValueError, match="resamples"):
        paired_bootstrap(np.zeros(3), np.arange(3), resamples=0)


def test_align_pairs_users_and_their_nth_examples():
    assert example_keys(np.array([5, 3, 5])) == [(5, 0), (3, 0), (5, 1)]
    ia, ib = align(np.array([1, 2, 3, 2]), np.array([2, 3, 9, 2]))
    assert ia.tolist() == [1, 2, 3] and ib.tolist() == [0, 1, 3]
    ia, ib = align(np.array([1]), np.array([2]))
    assert ia.size == ib.size == 0
    ia, ib, ic = align(np.array([1, 2, 3]), np.array([3, 2]), np.array([2, 3, 4]))
    assert (ia.tolist(), ib.tolist(), ic.tolist()) == ([1, 2], [1, 0], [0, 1])


def test_coverage_interval_by_hand():
    # Two users, 10 items. A lists items 1, 2 for both; B lists 1, 2 for user 1 and 3, 4 for user 2:
    # coverage 0.2 against 0.4. A resample of two users draws both (p 1/2: B - A = 0.2) or one twice
    # (p 1/2: both cover 2 items, 0): mean 0.1, short of the full sample's 0.2 by 0.1, so the
    # percentiles 0 and 0.2 move up to 0.1 and 0.3.
    a, b = np.array([[1, 2], [1, 2]]), np.array([[1, 2], [3, 4]])
    iv = coverage_bootstrap(a, b, np.array([1, 2]), items=10, resamples=4000)
    assert iv.diff == pytest.approx(0.2) and iv.verdict == "higher"
    assert (iv.low, iv.high) == pytest.approx((0.1, 0.3), abs=0.01)
    same = coverage_bootstrap(a, a, np.array([1, 2]), items=10)
    assert (same.diff, same.low, same.high, same.verdict) == (0.0, 0.0, 0.0, "no difference")
    # One user's two examples are drawn together (a temporal split); -1 is an empty slot.
    one = coverage_bootstrap(np.array([[1, -1], [1, -1]]), np.array([[1, -1], [2, -1]]), np.array([5, 5]), items=10)
    assert (one.diff, one.low, one.high) == pytest.approx((0.1, 0.1, 0.1))
    with pytest.raises(ValueError, match="one user per pair of lists"):
        coverage_bootstrap(a, b[:1], np.array([1, 2]), items=10)
