"""SID codec: tokens <-> codes <-> items, LC-Rec files, vocabulary file, 1:1 checks."""
import json
from pathlib import Path

import numpy as np
import pytest

from indexing.sid import (
    SidError,
    SidIndex,
    parse_sid_token,
    read_index_codes,
    read_vocab,
    sid_token,
    split_sid_text,
)

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"


def test_token_round_trip():
    assert sid_token(0, 12) == "<a_12>"
    assert sid_token(3, 0) == "<d_0>"
    assert parse_sid_token("<b_200>") == (1, 200)
    for bad in ["<a12>", "a_1", "<A_1>", "<a_-1>", "<a_1> ", 7]:
        with pytest.raises(SidError):
            parse_sid_token(bad)
    assert split_sid_text("<think>x</think><answer><a_1><b_22> <c_3></answer>") == ["<a_1>", "<b_22>", "<c_3>"]


def test_index_maps_items_codes_tokens():
    idx = SidIndex({0: (1, 2), 1: (1, 0), 2: (3, 2)}, level_sizes=(4, 3))
    assert idx.depth == 2 and idx.num_items == 3
    assert idx.tokens(1) == ["<a_1>", "<b_0>"]
    assert idx.text(2) == "<a_3><b_2>"
    assert idx.item_of(["<a_3>", "<b_2>"]) == 2
    assert idx.item_of("<a_1><b_0>") == 1
    assert idx.item_of(["<a_3>", "<b_1>"]) is None      # well formed, not an item
    assert idx.item_of(["<b_3>", "<a_2>"]) is None      # levels out of order
    assert idx.item_of(["<a_3>"]) is None               # too short
    assert idx.item_of_codes((1, 2)) == 0
    # Vocabulary covers every code below level_sizes, used or not, level by level.
    assert idx.vocab() == ["<a_0>", "<a_1>", "<a_2>", "<a_3>", "<b_0>", "<b_1>", "<b_2>"]
    np.testing.assert_array_equal(idx.as_array(), [[1, 2], [1, 0], [3, 2]])
    with pytest.raises(SidError, match="no SID"):
        idx.codes(7)


def test_index_rejects_bad_tables():
    with pytest.raises(SidError, match="same depth"):
        SidIndex({0: (1, 2), 1: (1,)})
    with pytest.raises(SidError, match=r"items \[0, 2\] share <a_1><b_2>"):
        SidIndex({0: (1, 2), 1: (1, 0), 2: (1, 2)})
    with pytest.raises(SidError, match="level_sizes allows 2"):
        SidIndex({0: (1, 2)}, level_sizes=(4, 2))


def test_save_load_vocab_round_trip(tmp_path):
    idx = SidIndex.from_array(np.array([[0, 5, 1], [2, 5, 0], [2, 4, 0]]), level_sizes=(3, 8, 2))
    path = idx.save(tmp_path / "X.index.json")
    assert json.loads(path.read_text())["1"] == ["<a_2>", "<b_5>", "<c_0>"]
    back = SidIndex.load(path, level_sizes=(3, 8, 2))
    assert back.sids == idx.sids
    vocab = read_vocab(idx.write_vocab(tmp_path / "sid_vocab.txt"))
    assert vocab == idx.vocab() and len(vocab) == 3 + 8 + 2


@pytest.mark.parametrize("content, message", [
    ({"0": ["<a_1>", "<c_2>"]}, "expected level 'b' at that position"),
    ({"0": ["<a_1>", "<b_2>"], "1": ["<a_1>"]}, "SID has 1 levels, earlier items have 2"),
    ({"x": ["<a_1>"]}, "key 'x': item id"),
    ({"0": "<a_1><b_2>"}, "expected a non-empty list"),
    ({"0": ["<a_1>", "b_2"]}, "'b_2' is not a SID token"),
])
def test_bad_files_name_file_and_key(tmp_path, content, message):
    path = tmp_path / "bad.index.json"
    path.write_text(json.dumps(content))
    with pytest.raises(SidError, match=message) as err:
        SidIndex.load(path)
    assert str(path) in str(err.value)


def test_duplicate_file_points_to_importer():
    path = ROOT / "data/office/Office.unitok5.index.json"
    with pytest.raises(SidError, match="index.import_file"):
        SidIndex.load(path)
    codes = read_index_codes(path)
    assert len(codes) == 2420 and {len(c) for c in codes.values()} == {5}


@pytest.mark.parametrize("folder, name", [("beauty", "Beauty"), ("instruments", "Instruments")])
def test_letter_files_parse(folder, name):
    path = SHARED / folder / f"{name}.letter.index.json"
    if not path.exists():
        pytest.skip(f"{path} absent (the shared datasets live beside the repo in CI)")
    codes = read_index_codes(path)
    assert {len(c) for c in codes.values()} == {4}
    assert max(max(c) for c in codes.values()) <= 255
