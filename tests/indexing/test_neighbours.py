"""indexing/neighbours.py on hand-made vectors, and the run's similar-items table (sft/related.py)."""
import numpy as np
import pytest

from cluster.errors import MissingArtefact
from cluster.spec import JobSpec
from indexing.neighbours import NeighbourError, retrieve, similar_items, write_related
from sft.related import related_table


def test_similar_items_by_hand():
    desc = np.array([[1.0, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.7, 0.7]])
    # Item 0: cosines to 1..4 are 0.994, 0, 0.110, 0.707 -> 1, 4; item 4 is as close to 1 as to 3.
    near = similar_items(desc, 2)
    assert near[0].tolist() == [1, 4] and near[2].tolist() == [3, 4]
    assert not (near == np.arange(5)[:, None]).any()
    with pytest.raises(NeighbourError, match="k=5 neighbours from 5 candidates"):
        retrieve(desc, desc, 5)


def test_related_table_takes_the_first_k_and_names_what_is_missing(tmp_path):
    spec = JobSpec(name="x", run_dir=str(tmp_path), sft={"retrieved_items": 2})
    with pytest.raises(MissingArtefact, match=r"related_items.npy: no similar-items table for sft.retrieved_items=2; "
                                              r"run the index stage again"):
        related_table(spec)
    spec.layout.related_items.parent.mkdir(parents=True)
    desc = np.random.default_rng(0).standard_normal((30, 4))
    write_related(spec.layout.related_items, desc)
    table = related_table(spec)
    assert table.shape == (30, 2) and (table == similar_items(desc, 2)).all()
    assert related_table(JobSpec(name="x", run_dir=str(tmp_path))) is None  # option off
    np.save(spec.layout.related_items, np.zeros((30, 1), dtype=np.int32))  # a table narrower than k
    with pytest.raises(MissingArtefact, match="1 similar items per item, sft.retrieved_items asks for 2"):
        related_table(spec)
