"""LC-Rec data layer on the real Office, Beauty and Instruments sets: loading, splits, validation."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from indexing.dataset import DataError, Example, leave_one_out, load_dataset, reserve_latest, stats, temporal

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
SETS = [("office", "Office", ROOT / "data/office"),
        ("beauty", "Beauty", SHARED / "beauty"),
        ("instruments", "Instruments", SHARED / "instruments")]
EXPECTED = {"Office": (4905, 2420, 53258), "Beauty": (22363, 12101, 198502), "Instruments": (24772, 9922, 206153)}


@pytest.fixture(scope="module", params=SETS, ids=[s[0] for s in SETS])
def dataset(request):
    _, name, folder = request.param
    if not folder.exists():
        pytest.skip(f"{folder} absent (the shared datasets live beside the repo in CI)")
    return load_dataset(folder, name)


def test_counts_match_readme(dataset):
    users, items, inters = EXPECTED[dataset.name]
    assert (len(dataset.sequences), dataset.num_items, dataset.num_interactions) == (users, items, inters)
    assert len(dataset.index_files) == 1


def test_leave_one_out(dataset):
    split = leave_one_out(dataset, max_history=20)
    n_users = len(dataset.sequences)
    assert len(split.valid) == len(split.test) == n_users
    assert len(split.train) == dataset.num_interactions - 3 * n_users
    assert all(len(ex.history) <= 20 for ex in split.test)
    user = split.test[0].user
    seq = dataset.sequences[user]
    assert split.test[0].target == seq[-1] and split.test[0].history == tuple(seq[:-1][-20:])
    assert split.valid[0].target == seq[-2] and split.valid[0].history == tuple(seq[:-2][-20:])


def test_reserve_latest_sets_apart_each_users_last_targets():
    train = [Example(1, (), 10), Example(1, (10,), 11), Example(1, (10, 11), 12), Example(2, (), 20),
             Example(3, (), 30), Example(3, (30,), 31)]
    kept, reserved = reserve_latest(train, 1)
    assert [e.target for e in reserved] == [12, 20, 31] and [e.target for e in kept] == [10, 11, 30]
    kept, reserved = reserve_latest(train, 2)  # user 2 has one example: it is reserved whole
    assert [e.target for e in reserved] == [11, 12, 20, 30, 31] and [e.target for e in kept] == [10]
    assert reserve_latest(train, 0) == (train, [])


def test_reserved_targets_are_never_an_sft_target(dataset):
    kept, reserved = reserve_latest(leave_one_out(dataset).train, 1)
    assert len(reserved) == len(dataset.sequences)
    # Each user's reserved example is the one whose history is longest; nothing kept comes after it.
    latest = {e.user: e for e in reserved}
    assert all(len(e.history) < len(latest[e.user].history) or len(e.history) == 20 for e in kept)


def test_temporal_split_is_ordered_per_user(dataset):
    split = temporal(dataset, max_history=5)
    total = len(split.train) + len(split.valid) + len(split.test)
    assert total == dataset.num_interactions - len(dataset.sequences)
    assert len(split.train) / total == pytest.approx(0.8, abs=0.12)
    last_train = {}
    for ex in split.train:
        last_train[ex.user] = max(last_train.get(ex.user, 0), len(ex.history))
    for ex in split.test:
        assert len(ex.history) > last_train.get(ex.user, 0) or len(ex.history) == 5


def test_max_history_is_configurable():
    ds = load_dataset(ROOT / "data/office", "Office")
    assert max(len(ex.history) for ex in leave_one_out(ds, max_history=3).test) == 3


def test_stats_office():
    ds = load_dataset(ROOT / "data/office", "Office")
    s = stats(ds, leave_one_out(ds))
    assert s["users"] == 4905 and s["items_without_text"] == 0 and s["seq_len_min"] == 5
    assert s["seq_len_p50"] == 7.0


def _mk(tmp_path, inter, items=None, raw_inter=None):
    (tmp_path / "X.inter.json").write_text(raw_inter if raw_inter is not None else json.dumps(inter))
    if items is not None:
        (tmp_path / "X.item.json").write_text(json.dumps(items))
    return tmp_path


def test_unknown_item_names_file_and_user(tmp_path):
    folder = _mk(tmp_path, {"0": [0, 1, 7]}, {"0": {"title": "a"}, "1": {"title": "b"}})
    with pytest.raises(DataError, match=r"X\.inter\.json: key '0': item id 7 is not in X\.item\.json"):
        load_dataset(folder, "X")


def test_short_users_dropped_or_error(tmp_path):
    folder = _mk(tmp_path, {"0": [0, 1, 2], "1": [0, 1]})
    assert load_dataset(folder, "X").dropped_users == 1
    with pytest.raises(DataError, match=r"key '1': 2 interactions"):
        load_dataset(folder, "X", short_users="error")


def test_malformed_json_line_and_column(tmp_path):
    folder = _mk(tmp_path, None, raw_inter='{"0": [0, 1, 2],\n "1": [0, 1 2]}')
    with pytest.raises(DataError, match=r"X\.inter\.json: malformed JSON at line 2, column"):
        load_dataset(folder, "X")


def test_duplicate_and_non_integer_ids(tmp_path):
    folder = _mk(tmp_path, None, raw_inter='{"0": [0, 1, 2], "0": [1, 2, 3]}')
    with pytest.raises(DataError, match=r"duplicate key '0'"):
        load_dataset(folder, "X")
    folder = _mk(tmp_path, {"u7": [0, 1, 2]})
    with pytest.raises(DataError, match=r"key 'u7': user id must be"):
        load_dataset(folder, "X")
    folder = _mk(tmp_path, {"0": [0, "1", 2]})
    with pytest.raises(DataError, match=r"key '0': expected a list of non-negative integer"):
        load_dataset(folder, "X")


def test_cli_data_stats_and_bad_data_exit(tmp_path):
    res = subprocess.run([sys.executable, "-m", "gream.cli", "data", "stats", "configs/demo.yaml", "--json"],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["interactions"] == 53258
    _mk(tmp_path, {"0": [0, 1, 9]}, {"0": {}, "1": {}})
    res = subprocess.run([sys.executable, "-m", "gream.cli", "data", "stats", "configs/demo.yaml",
                          "--set", f"data.path={tmp_path}", "--set", "data.name=X"],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and "X.inter.json: key '0': item id 9" in res.stderr
