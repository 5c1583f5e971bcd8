"""Collaborative item vectors: co-occurrence counts, PPMI and the fused k-means input, by hand and on
Office's training split."""
import math
from pathlib import Path

import numpy as np
import pytest

from cluster.spec import SpecError, load_spec
from indexing.collaborative import (
    CollaborativeError,
    collaborative_vectors,
    cooccurrence,
    fuse,
    ppmi,
)
from indexing.dataset import Example, leave_one_out, load_dataset

ROOT = Path(__file__).resolve().parents[2]


def test_cooccurrence_counts_the_window_before_each_target_both_ways():
    examples = [Example(0, (0, 1, 2), 3), Example(1, (3,), 3), Example(2, (1,), 2)]
    counts = cooccurrence(examples, 4, window=2).toarray()
    expected = np.zeros((4, 4))
    for a, b in [(3, 1), (3, 2), (2, 1)]:  # item 0 is outside the window; a repeat of the target is no pair
        expected[a, b] += 1
        expected[b, a] += 1
    np.testing.assert_array_equal(counts, expected)


def test_ppmi_keeps_only_positive_associations():
    # 0-1 and 2-3 are bought together often, 1-2 once though both are popular.
    counts = np.zeros((4, 4))
    for (a, b), n in {(0, 1): 10, (1, 2): 1, (2, 3): 10}.items():
        counts[a, b] = counts[b, a] = n
    from scipy import sparse
    out = ppmi(sparse.csr_matrix(counts)).toarray()
    total, marginal = 42.0, [10, 11, 11, 10]
    assert out[0, 1] == pytest.approx(math.log(10 * total / (marginal[0] * marginal[1])))
    assert out[1, 2] == 0.0  # log(42 / 121) < 0
    assert out[2, 3] == out[3, 2] == pytest.approx(math.log(10 * 42 / 110))


def test_vectors_group_items_bought_together_and_leave_loners_at_zero():
    group_a, group_b = [0, 1, 2], [3, 4, 5]
    examples = [Example(u, (g[i],), g[(i + 1) % 3]) for u, g in enumerate([group_a, group_b] * 5) for i in range(3)]
    v = collaborative_vectors(examples, 7, dim=2, window=1)
    assert np.all(v[6] == 0) and np.allclose(np.linalg.norm(v[:6], axis=1), 1.0, atol=1e-5)
    cos = v @ v.T
    assert cos[0, 1] > 0.9 and cos[3, 4] > 0.9 and abs(cos[0, 3]) < 0.1
    with pytest.raises(CollaborativeError, match="dim"):
        collaborative_vectors(examples, 7, dim=7, window=1)


def test_fuse_splits_squared_distance_by_weight():
    text = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    collab = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=np.float32)
    out = fuse(text, collab, 0.25)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0)
    d = np.sum((out[0] - out[1]) ** 2)  # text distance 2 and collaborative distance 2, weighted 3:1
    assert d == pytest.approx(0.75 * 2 + 0.25 * 2)
    np.testing.assert_allclose(out[2], [0.6, 0.8, 0.0, 0.0])  # no signal: the text direction alone
    with pytest.raises(CollaborativeError, match="weight"):
        fuse(text, collab, 1.0)


def test_office_training_pairs_are_closer_than_random_pairs():
    ds = load_dataset(ROOT / "data/office", "Office")
    train = leave_one_out(ds).train
    v = collaborative_vectors(train, ds.num_items, dim=64, window=5)
    pairs = np.array([(ex.history[-1], ex.target) for ex in train if ex.history[-1] != ex.target])
    together = np.mean(np.sum(v[pairs[:, 0]] * v[pairs[:, 1]], axis=1))
    rng = np.random.default_rng(0)
    random_pairs = rng.integers(0, ds.num_items, size=(len(pairs), 2))
    apart = np.mean(np.sum(v[random_pairs[:, 0]] * v[random_pairs[:, 1]], axis=1))
    assert together > apart + 0.2


def test_spec_refuses_collaborative_weight_with_an_imported_index(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("name: x\nindex:\n  import_file: a.index.json\n  collaborative: {weight: 0.5}\n")
    with pytest.raises(SpecError, match=r"index.*collaborative.weight.*import_file"):
        load_spec(spec)
