"""Dedup level and last-level reassignment by hand, and import of the real UniTok / LETTER index files."""
import json
from pathlib import Path

import numpy as np
import pytest

from indexing.dedup import (
    CollisionError,
    add_dedup_level,
    collision_stats,
    dedup_ordinals,
    reassign_last_level,
)
from indexing.importer import import_index
from indexing.sid import SidError, read_index_codes

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"


def test_dedup_ordinals_by_hand():
    codes = np.array([[1, 2], [0, 0], [1, 2], [3, 3], [1, 2], [0, 0]])
    assert dedup_ordinals(codes).tolist() == [0, 0, 1, 0, 2, 1]
    out = add_dedup_level(codes)
    assert out[:, 2].tolist() == [0, 0, 1, 0, 2, 1]
    assert len({tuple(r) for r in out}) == len(out)
    st = collision_stats(codes)
    assert (st.items, st.unique_sids, st.colliding_items, st.duplicate_groups, st.largest_group) == (6, 3, 5, 2, 3)
    assert st.collision_rate == pytest.approx(0.5)
    assert collision_stats(out).collision_rate == 0.0


def test_reassign_last_level_by_hand():
    # Items 0, 2, 3 share (1, 2); item 4 also sits under prefix 1, on code 0. Last level: 4 codes.
    codes = np.array([[1, 2], [0, 0], [1, 2], [1, 2], [1, 0]])
    dist = np.array([[0.5, 9, 1, 9], [0, 1, 2, 3], [0.1, 0.2, 0.3, 0.4], [0.1, 5, 0.9, 0.2], [0, 1, 2, 3]])
    out = reassign_last_level(codes, dist)
    # Distances to code 2: item 2 0.3 (keeps it), item 3 0.9 (moves first), item 0 1.0.
    # Item 3: free codes 1, 3 -> 3 (0.2); item 0: free code 1 only -> 1.
    assert out[:, 1].tolist() == [1, 0, 2, 3, 0]
    assert out[:, 0].tolist() == codes[:, 0].tolist()
    assert collision_stats(out).collision_rate == 0.0
    assert reassign_last_level(out, dist).tolist() == out.tolist()  # nothing collides: nothing moves


def test_reassign_last_level_names_a_full_prefix():
    codes = np.array([[1, 0], [1, 0], [1, 1]])
    with pytest.raises(CollisionError, match=r"collisions: reassign: prefix \[1\] holds more items than the last level "
                                             r"has codes \(2\); use collisions: level"):
        reassign_last_level(codes, np.zeros((3, 2)))


def test_import_unitok_office_resolves_duplicates():
    res = import_index(ROOT / "data/office/Office.unitok5.index.json", num_items=2420)
    raw = read_index_codes(res.source)
    assert res.file_depth == 5 and res.dedup_added and res.index.depth == 6
    assert res.before.unique_sids == 1006 and res.before.largest_group == 39
    assert sum(len(g) for g in res.duplicates) == res.before.colliding_items
    # Every item keeps its file SID as prefix; the new level is its ordinal in the group, in item order.
    for group in res.duplicates[:5]:
        assert [res.index.codes(i)[:5] for i in group] == [raw[i] for i in group]
        assert [res.index.codes(i)[5] for i in group] == list(range(len(group)))
    assert res.index.num_items == 2420 and res.index.item_of(res.index.tokens(17)) == 17


@pytest.mark.parametrize("folder, name, items, dup_items", [("beauty", "Beauty", 12101, 24),
                                                            ("instruments", "Instruments", 9922, 48)])
def test_import_letter_files(folder, name, items, dup_items):
    path = SHARED / folder / f"{name}.letter.index.json"
    if not path.exists():
        pytest.skip(f"{path} absent (the shared datasets live beside the repo in CI)")
    res = import_index(path, num_items=items, depth=4)
    assert res.index.depth == 5 and res.before.colliding_items == dup_items
    assert res.before.items - res.before.unique_sids == {"Beauty": 13, "Instruments": 25}[name]  # README counts
    assert res.index.num_items == items


def test_import_without_duplicates_keeps_file(tmp_path):
    path = tmp_path / "X.index.json"
    path.write_text(json.dumps({"0": ["<a_1>", "<b_0>"], "1": ["<a_0>", "<b_3>"]}))
    res = import_index(path, num_items=2)
    assert not res.dedup_added and res.index.depth == 2 and res.index.codes(1) == (0, 3)


def test_import_checks_depth_and_coverage(tmp_path):
    path = tmp_path / "X.index.json"
    path.write_text(json.dumps({"0": ["<a_1>", "<b_0>"], "2": ["<a_0>", "<b_3>"]}))
    with pytest.raises(SidError, match=r"expected 3"):
        import_index(path, depth=3)
    with pytest.raises(SidError, match=r"missing 1 \(first \[1\]\), unknown 0"):
        import_index(path, num_items=3)


def test_spec_refuses_reassign_with_an_imported_index(tmp_path):
    from cluster.spec import SpecError, load_spec

    spec = tmp_path / "job.yaml"
    spec.write_text("name: x\nindex:\n  import_file: a.index.json\n  collisions: reassign\n")
    with pytest.raises(SpecError, match=r"index.*collisions: reassign.*import_file"):
        load_spec(spec)
