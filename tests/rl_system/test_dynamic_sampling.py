from dataclasses import dataclass

import numpy as np
import pytest

from rl_system.dynamic_sampling import BatchFiller, classify


@dataclass
class Group:
    rewards: np.ndarray
    hits: np.ndarray


INFORMATIVE = Group(np.array([1.0, 0.5, 0.0]), np.array([True, False, False]))
ALL_MISS = Group(np.zeros(3), np.zeros(3, bool))
ALL_HIT = Group(np.ones(3), np.ones(3, bool))
CONSTANT = Group(np.full(3, 0.5), np.zeros(3, bool))


def test_classify_labels():
    groups = [INFORMATIVE, ALL_MISS, ALL_HIT, CONSTANT, Group(np.array([0.5, 0.5, 0.0]), np.zeros(3, bool))]
    labels = classify(np.stack([g.rewards for g in groups]), np.stack([g.hits for g in groups]))
    assert labels.tolist() == ["keep", "all_miss", "all_hit", "constant", "keep"]


class Script:
    """Hands out a fixed stream of groups and records how many were asked for each round."""

    def __init__(self, stream):
        self.stream = list(stream)
        self.asks = []

    def __call__(self, n):
        self.asks.append(n)
        out, self.stream = self.stream[:n], self.stream[n:]
        return out


def test_filler_resamples_until_full_and_reports_shares():
    script = Script([INFORMATIVE, ALL_MISS, ALL_HIT, CONSTANT] + [INFORMATIVE, ALL_MISS] * 10)
    result = BatchFiller(target_groups=4, max_extra_rounds=3).fill(script)
    assert result.full and len(result.kept) == 4
    # round 1: 1 kept of 4 -> keep rate 1/4 -> ask 3 * 4 = 12 (the oversample cap); round 2 fills it.
    assert script.asks == [4, 12]
    assert result.rounds == 2 and result.sampled == 16
    assert result.dropped == {"all_miss": 7, "all_hit": 1, "constant": 1}
    assert result.surplus == 3
    assert result.shares() == pytest.approx({"all_miss": 7 / 16, "all_hit": 1 / 16, "constant": 1 / 16})


def test_filler_stops_at_round_cap_with_a_partial_batch():
    script = Script([ALL_MISS] * 100 + [INFORMATIVE])
    result = BatchFiller(target_groups=2, max_extra_rounds=2).fill(script)
    assert not result.full and result.kept == []
    assert result.rounds == 3 and script.asks == [2, 8, 8]
    assert result.dropped["all_miss"] == 18


def test_filler_without_extra_rounds_samples_once():
    script = Script([INFORMATIVE, ALL_HIT, INFORMATIVE])
    result = BatchFiller(target_groups=2, max_extra_rounds=0).fill(script)
    assert script.asks == [2] and len(result.kept) == 1 and not result.full


def test_filler_rejects_bad_settings():
    with pytest.raises(ValueError, match="target_groups"):
        BatchFiller(0, 1)
    with pytest.raises(ValueError, match="max_extra_rounds"):
        BatchFiller(1, -1)


def test_filler_keeping_flat_groups_trains_every_group_in_one_round():
    script = Script([INFORMATIVE, ALL_MISS, ALL_HIT, CONSTANT] * 3)
    result = BatchFiller(target_groups=4, max_extra_rounds=3, drop_flat=False).fill(script)
    assert script.asks == [4] and result.rounds == 1
    assert result.kept == [INFORMATIVE, ALL_MISS, ALL_HIT, CONSTANT]
    assert result.informative == 1 and result.dropped == {"all_miss": 0, "all_hit": 0, "constant": 0}


def test_filler_counts_informative_groups_kept():
    script = Script([INFORMATIVE, ALL_MISS, INFORMATIVE, INFORMATIVE, INFORMATIVE])
    result = BatchFiller(target_groups=2, max_extra_rounds=0).fill(script)
    assert result.informative == 1 and len(result.kept) == 1
