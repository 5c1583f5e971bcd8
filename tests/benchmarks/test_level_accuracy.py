"""benchmarks/level_accuracy.py: per-level ranks and hit rates (pure, hand-computed)."""
import torch

from benchmarks.level_accuracy import hit_rates, level_ranks


def test_rank_counts_only_the_levels_own_codes_scoring_higher():
    logits = torch.tensor([[0.0, 5.0, 1.0, 3.0, 9.0],   # level 0 codes {1, 2, 3}, true 3: only 1 beats it
                           [0.0, 0.0, 0.0, 0.0, 0.0]])  # level 1 codes {4}, true 4, ties go to the target
    codes = [torch.tensor([1, 2, 3]), torch.tensor([4])]
    assert level_ranks(logits, codes, [3, 4]) == [1, 0]  # token 4 scores 9 in row 0 but is not a level-0 code


def test_hit_rates_per_level():
    ranks = [[0, 3], [12, 0], [5, 0], [9, 20]]
    rates = hit_rates(ranks, ks=(1, 10))
    assert rates == [{1: 0.25, 10: 0.75}, {1: 0.5, 10: 0.75}]
