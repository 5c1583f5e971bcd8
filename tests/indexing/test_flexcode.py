"""FlexCode's pure parts (indexing/flexcode.py) on hand-computed values; the whole build on Office is
in test_index_build.py."""
import numpy as np
import pytest
import torch

from indexing.dedup import reassign_last_level
from indexing.flexcode import (
    FlexcodeError,
    cf_token_counts,
    compose,
    info_nce,
    last_token_distances,
    match_at_1,
    popularity_quantiles,
    reconstruct,
)


def test_popularity_quantiles_by_hand():
    # Sorted counts 0 1 3 3 10: items with fewer interactions than each item, over 5 items.
    assert popularity_quantiles(np.array([0, 3, 3, 10, 1])).tolist() == [0.0, 0.4, 0.4, 0.8, 0.2]


def test_allocation_follows_popularity():
    counts = np.array([0, 3, 3, 10, 1])
    assert cf_token_counts(counts, [0.5, 0.8]).tolist() == [0, 0, 0, 2, 0]
    assert cf_token_counts(counts, [0.3, 0.8]).tolist() == [0, 1, 1, 2, 0]
    assert cf_token_counts(counts, [0.1, 0.3, 0.5]).tolist() == [0, 2, 2, 3, 1]
    # An item never seen in training gets none, whatever the quantiles.
    assert cf_token_counts(np.array([0, 0, 5]), [0.01]).tolist() == [0, 0, 1]
    rng = np.random.default_rng(0)
    many = rng.zipf(1.5, 500).clip(max=1000) * (rng.random(500) > 0.1)
    n = cf_token_counts(many, [0.5, 0.8])
    order = np.argsort(many, kind="stable")
    assert (np.diff(n[order]) >= 0).all()  # more popular, never fewer collaborative tokens
    assert (n[many == 0] == 0).all()


def test_compose_by_hand_keeps_the_codebooks_apart():
    cf = np.array([[5, 6], [7, 8], [9, 1]])
    sem = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    out = compose(cf, sem, np.array([0, 1, 2]), cf_size=10)
    assert out.tolist() == [[11, 12, 13], [7, 14, 15], [9, 1, 17]]
    # Collaborative tokens come first and stay below cf_size; semantic ones are shifted past it.
    for row, n in zip(out, [0, 1, 2]):
        assert (row[:n] < 10).all() and (row[n:] >= 10).all()
    with pytest.raises(FlexcodeError, match="0..3"):
        compose(cf, sem, np.array([0, 4, 1]), cf_size=10)


def test_last_token_distances_pick_the_last_tokens_codebook():
    # 3 levels, 2 collaborative codes, 3 semantic codes; items with 0, 2 and 3 collaborative tokens.
    cf_dist = [np.full((3, 2), 10.0 * (level + 1)) for level in range(3)]
    sem_dist = [np.full((3, 3), float(level + 1)) for level in range(3)]
    out = last_token_distances(np.array([0, 2, 3]), cf_dist, sem_dist, cf_size=2)
    inf = np.inf
    assert out.tolist() == [[inf, inf, 3, 3, 3],  # last token: semantic level 3
                            [inf, inf, 1, 1, 1],  # two collaborative, then semantic level 1
                            [30, 30, inf, inf, inf]]  # all collaborative: collaborative level 3


def test_reassign_stays_in_the_codebook_with_finite_distances():
    # Items 0 and 1 share (4, 7); codes 0-1 are the other codebook (inf), code 2 is free but far, 6 near.
    codes = np.array([[4, 7], [4, 7]])
    dist = np.array([[np.inf, np.inf, 5.0, 9, 9, 9, 1.0, 0.1], [np.inf, np.inf, 5.0, 9, 9, 9, 2.0, 0.2]])
    assert reassign_last_level(codes, dist).tolist() == [[4, 7], [4, 6]]
    dist[1, 2:7] = np.inf  # nothing finite is free: an error, not a code of the other codebook
    with pytest.raises(Exception, match="holds more items than the last level has codes"):
        reassign_last_level(codes, dist)


def test_info_nce_and_match_by_hand():
    a = torch.eye(3)
    # Perfectly matched unit rows at temperature 1: each row's loss is -log(e / (e + 2)).
    expected = -np.log(np.e / (np.e + 2))
    assert float(info_nce(a, a, 1.0)) == pytest.approx(expected)
    b = np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, 1]])
    assert match_at_1(np.eye(3), b) == pytest.approx(1 / 3)


def test_reconstruct_sums_the_chosen_centres():
    centroids = [np.array([[1.0, 0], [0, 1]]), np.array([[0.5, 0.5], [-1, 0]])]
    assert reconstruct(np.array([[0, 1], [1, 0]]), centroids).tolist() == [[0.0, 0.0], [0.5, 1.5]]
