"""Residual k-means pieces checked by hand (k-means on the real Office embeddings is tested in
test_index_build.py, next to the build that computes them)."""
import numpy as np
import pytest

from indexing.kmeans import (
    KMeansError,
    balanced_assign,
    check_codes,
    squared_distances,
)


def test_balanced_assign_by_hand():
    # Three rows all nearest to column 0, capacity 1: row 1 (closest) keeps it, then rows go on to
    # their next nearest column with room.
    dist = np.array([[1.0, 5.0, 9.0],
                     [0.5, 4.0, 2.0],
                     [2.0, 3.0, 8.0]])
    assert balanced_assign(dist, capacity=1).tolist() == [2, 0, 1]
    # Room for everyone: plain nearest assignment.
    assert balanced_assign(dist, capacity=3).tolist() == [0, 0, 0]
    with pytest.raises(KMeansError, match="cannot hold"):
        balanced_assign(dist, capacity=0)


def test_squared_distances_match_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 5)).astype(np.float32)
    c = rng.normal(size=(4, 5)).astype(np.float32)
    want = ((x[:, None, :] - c[None]) ** 2).sum(-1)
    np.testing.assert_allclose(squared_distances(x, c), want, rtol=1e-4, atol=1e-4)


def test_too_many_codes_suggests_a_size():
    with pytest.raises(KMeansError, match=r"index.codes=1024 is too large for 2420 items.*index.codes <= 605 \(e.g. 512\)"):
        check_codes(2420, 1024)
    check_codes(2420, 256)
