"""Ranking metrics against hand-computed values."""
import math

import numpy as np
import pytest

from sft.metrics import (
    MISSING,
    metric_names,
    metrics_from_ranks,
    ndcg_at_k,
    rank_of,
    ranking_metrics,
    ranks_in_rows,
    recall_at_k,
)


def test_ranks_in_rows_by_hand():
    items = np.array([[5, 7, 9], [7, -1, -1], [1, 2, 3]])  # -1: an empty beam slot
    assert ranks_in_rows(items, np.array([9, 7, 4])).tolist() == [2, 0, MISSING]


def test_single_example_values():
    assert rank_of([5, 3, 9], 9) == 2 and rank_of([5, 3], 9) == MISSING
    assert recall_at_k(2, 3) == 1.0 and recall_at_k(2, 2) == 0.0 and recall_at_k(MISSING, 10) == 0.0
    assert ndcg_at_k(0, 5) == 1.0
    assert ndcg_at_k(2, 5) == pytest.approx(0.5)  # 1 / log2(4)
    assert ndcg_at_k(1, 5) == pytest.approx(1 / math.log2(3))  # 0.6309
    assert ndcg_at_k(5, 5) == 0.0 and ndcg_at_k(MISSING, 5) == 0.0


def test_means_over_examples():
    ranked = [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12], [13, 14], [20, 21, 22, 23, 24, 25, 26]]
    targets = [1, 9, 99, 25]  # ranks 0, 2, missing, 5
    got = ranking_metrics(ranked, targets, [1, 5, 10])
    assert got == pytest.approx({
        "recall@1": 0.25, "recall@5": 0.5, "recall@10": 0.75,
        "ndcg@5": (1 + 0.5) / 4,
        "ndcg@10": (1 + 0.5 + 1 / math.log2(7)) / 4,  # (1 + 0.5 + 0.3562) / 4 = 0.4640
    })
    assert list(got) == metric_names([10, 1, 5]) == ["recall@1", "recall@5", "recall@10", "ndcg@5", "ndcg@10"]
    assert metrics_from_ranks([0, 2, MISSING, 5], [1, 5, 10]) == got


def test_bad_input():
    with pytest.raises(ValueError, match="3 ranked lists for 2 targets"):
        ranking_metrics([[1], [2], [3]], [1, 2], [1])
    with pytest.raises(ValueError, match="no examples"):
        metrics_from_ranks([], [1])
    with pytest.raises(ValueError, match="positive"):
        metrics_from_ranks([0], [0])
