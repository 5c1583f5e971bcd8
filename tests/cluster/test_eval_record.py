"""eval.json + ranks.json: the writer, the reader's errors, and real evaluations whose ranks give back
the reported figures (`gream eval`'s vLLM beam and SASRec's full ranking)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cluster.eval_record import (
    NOT_FOUND,
    EvalRecordError,
    RankRecord,
    SplitRanks,
    cap_ranks,
    read_eval,
    read_ranks,
    split_ranks,
    write_eval,
)
from indexing.dataset import split_from_spec
from sft.metrics import metrics_from_ranks
from tests.eval_fixtures import SFT_USERS


def test_full_ranks_are_capped_at_the_depth():
    assert cap_ranks([0, 9, 10, 250, NOT_FOUND], 10).tolist() == [0, 9, -1, -1, -1]
    ranks = split_ranks([4, 5], [3, 12], depth=10)
    assert ranks.users.tolist() == [4, 5] and ranks.ranks.tolist() == [3, -1]
    # Recall@K / NDCG@K for K <= depth are the same from capped and full ranks.
    full = np.array([0, 3, 9, 10, 57])
    assert metrics_from_ranks(cap_ranks(full, 10), [1, 5, 10]) == metrics_from_ranks(full, [1, 5, 10])


def test_round_trip_and_a_stale_ranks_file_is_removed(tmp_path):
    record = RankRecord(10, (1, 5, 10), {"valid": SplitRanks(np.array([1, 2]), np.array([0, -1]))})
    write_eval(tmp_path, {"valid": {"recall@1": 0.5}}, record)
    back = read_ranks(tmp_path)
    assert back.depth == 10 and back.ks == (1, 5, 10)
    assert back.splits["valid"].users.tolist() == [1, 2] and back.splits["valid"].ranks.tolist() == [0, -1]
    assert read_eval(tmp_path) == {"valid": {"recall@1": 0.5}}
    write_eval(tmp_path, {"valid": {"recall@1": 0.0}})
    assert not (tmp_path / "ranks.json").exists()


def test_segment_labels_round_trip_and_restrict():
    head = np.array([True, False, True])
    ranks = split_ranks([7, 8, 9], [0, 4, 30], 10, {"head": head, "tail": ~head})
    assert ranks.only("tail").users.tolist() == [8] and ranks.only("head").ranks.tolist() == [0, -1]
    with pytest.raises(ValueError, match="segment 'head': expected 3 booleans"):
        SplitRanks(ranks.users, ranks.ranks, {"head": np.array([1, 0, 1])})


def test_segment_labels_are_stored_as_0_1(tmp_path):
    head = np.array([True, False])
    write_eval(tmp_path, {}, RankRecord(10, (10,), {"test": split_ranks([1, 2], [0, 3], 10, {"head": head})}))
    assert json.loads((tmp_path / "ranks.json").read_text())["splits"]["test"]["segments"] == {"head": [1, 0]}
    assert read_ranks(tmp_path).splits["test"].segments["head"].tolist() == [True, False]


@pytest.mark.parametrize("payload, message", [
    ({"depth": 0, "ks": [1], "splits": {}}, "key 'depth' must be a positive integer"),
    ({"depth": 5, "ks": [10], "splits": {"valid": {}}}, r"key 'ks' must be cut-offs in 1..depth \(5\)"),
    ({"depth": 5, "ks": [1], "splits": {"valid": {"users": [1], "ranks": [0, 1]}}}, "1 users but 2 ranks"),
    ({"depth": 5, "ks": [1], "splits": {"test": {"users": [1], "ranks": [5]}}}, "'splits.test.ranks': 5 is outside"),
    ({"depth": 5, "ks": [1], "splits": {"test": {"users": ["a"], "ranks": [1]}}}, "'splits.test.users' must be a list"),
    ({"depth": 5, "ks": [1], "splits": {"test": {"users": [1], "ranks": [1], "segments": {"head": [2]}}}},
     "'splits.test.segments.head' must hold 1 values of 0 or 1"),
])
def test_malformed_ranks_name_the_file_and_key(tmp_path, payload, message):
    (tmp_path / "ranks.json").write_text(json.dumps(payload))
    with pytest.raises(EvalRecordError, match=message) as err:
        read_ranks(tmp_path)
    assert str(tmp_path / "ranks.json") in str(err.value) and err.value.exit_code == 2


def test_missing_files_say_what_to_run(tmp_path):
    with pytest.raises(EvalRecordError, match="ranks.json: no per-user ranks; evaluate again"):
        read_ranks(tmp_path)
    with pytest.raises(EvalRecordError, match="eval.json: not found"):
        read_eval(tmp_path)


def test_real_evaluations_give_back_their_figures_from_the_ranks(evaluated_run):
    spec = evaluated_run
    split = split_from_spec(spec)
    for stage, users in (("sft", SFT_USERS), ("baselines/sasrec", None)):
        folder = spec.run_path / stage
        figures, ranks = read_eval(folder), read_ranks(folder)
        assert ranks.depth == spec.eval.beam_width and ranks.ks == tuple(spec.eval.ks)
        for name in ("valid", "test"):
            examples = getattr(split, name)[:users]
            assert ranks.splits[name].users.tolist() == [ex.user for ex in examples]
            expected = {k: v for k, v in figures[name].items() if "@" in k}
            assert metrics_from_ranks(ranks.splits[name].ranks, spec.eval.ks) == pytest.approx(expected, abs=1e-12)
            assert figures[name]["users"] == len(examples)
    sasrec = read_eval(spec.run_path / "baselines/sasrec")
    assert sasrec["valid"]["recall@10"] > 0  # a trained model, so the check above is not all zeros
    assert sasrec["meta"]["all_users"]["test"] == sasrec["test"]  # every user: the headline is all of them
