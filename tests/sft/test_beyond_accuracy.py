"""Beyond-accuracy metrics against lists worked out by hand (the training split of
tests/indexing/test_segments.py: item 7 is the one head item)."""
import math

import numpy as np
import pytest

from indexing.segments import Popularity
from indexing.sid import SidIndex
from sft.beyond_accuracy import EMPTY, Catalogue, coverage, list_metrics, per_user
from tests.indexing.test_segments import TRAIN

ITEMS = 10
INDEX = SidIndex({i: (i // 3, i % 3) for i in range(ITEMS)})  # first-level code i // 3
EMBEDDINGS = np.tile(np.array([1.0, 0.0], dtype=np.float32), (ITEMS, 1))
EMBEDDINGS[6], EMBEDDINGS[0] = (0.0, 1.0), (-1.0, 0.0)  # 6 at right angles to the rest, 0 opposite
LISTS = np.array([[7, 6, 5], [0, 1, EMPTY], [EMPTY, EMPTY, EMPTY]])


def test_popularity_counts_training_interactions_with_add_one_information():
    pop = Popularity.from_train(TRAIN, ITEMS)
    assert pop.counts.tolist() == [0, 0, 0, 0, 0, 1, 2, 4, 1, 1] and np.flatnonzero(pop.head).tolist() == [7]
    assert pop.share()[7] == pytest.approx(4 / 9)
    # 9 interactions over 10 ids: (count + 1) / 19.
    assert pop.self_information()[[7, 0]] == pytest.approx([math.log2(19 / 5), math.log2(19)])
    assert len(Popularity.from_train(TRAIN, 3).counts) == ITEMS  # an id seen in training is always covered


def test_per_user_metrics_by_hand():
    cat = Catalogue.build(TRAIN, ITEMS, INDEX, EMBEDDINGS)
    got = per_user(LISTS, cat, 3)
    assert list(got) == cat.names(3)[:-1] == ["tail_share@3", "novelty@3", "distinct_codes@3", "ild@3"]
    assert got["tail_share@3"] == pytest.approx([2 / 3, 1.0, 0.0])
    # Add-one shares of 7, 6, 5: 5/19, 3/19, 2/19; of 0 and 1: 1/19.
    assert got["novelty@3"] == pytest.approx([math.log2(19) - math.log2(30) / 3, math.log2(19), 0.0])
    assert got["distinct_codes@3"].tolist() == [2.0, 1.0, 0.0]  # codes 2, 2, 1 | 0, 0 | none
    # 7-6 and 6-5 at right angles (distance 1), 7-5 alike (0) | 0 and 1 opposite (2) | no pair.
    assert got["ild@3"] == pytest.approx([2 / 3, 2.0, 0.0])


def test_cut_off_and_coverage_by_hand():
    cat = Catalogue.build(TRAIN, ITEMS, INDEX)
    assert cat.names(1) == ["tail_share@1", "novelty@1", "distinct_codes@1", "coverage@1"]  # no ild without text
    assert list_metrics(LISTS, cat, 1) == pytest.approx({
        "tail_share@1": 1 / 3, "novelty@1": (math.log2(19 / 5) + math.log2(19)) / 3, "distinct_codes@1": 2 / 3,
        "coverage@1": 0.2})  # items 7 and 0 of 10
    assert coverage(LISTS, ITEMS) == 0.5  # 7, 6, 5, 0, 1
    no_index = Catalogue.build(TRAIN, ITEMS)
    assert no_index.names(10) == ["tail_share@10", "novelty@10", "coverage@10"]
    assert no_index.head.tolist() == cat.head.tolist()
