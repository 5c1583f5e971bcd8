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
from indexing.segments import head_items, training_interactions
from sft.metrics import metric_names, metrics_from_ranks
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


def test_top_lists_and_their_values_round_trip_and_restrict(tmp_path):
    head = np.array([True, False, True])
    ranks = split_ranks([7, 8, 9], [0, 4, 30], 10, {"head": head, "tail": ~head}, top=[[3, 4], [5, -1], [6, 3]],
                        lists={"tail_share@2": np.array([0.5, 1.0, 0.0])})
    write_eval(tmp_path, {}, RankRecord(10, (1, 2), {"test": ranks}, items=12))
    back = read_ranks(tmp_path)
    assert back.items == 12 and back.splits["test"].top.tolist() == [[3, 4], [5, -1], [6, 3]]
    assert back.splits["test"].lists["tail_share@2"].tolist() == [0.5, 1.0, 0.0]
    tail = back.splits["test"].only("tail")
    assert tail.top.tolist() == [[5, -1]] and tail.lists["tail_share@2"].tolist() == [1.0]
    assert "\n" not in (tmp_path / "ranks.json").read_text()  # written for a program: no line per number
    with pytest.raises(ValueError, match=r"top: expected \[3, K\] item ids"):
        SplitRanks(ranks.users, ranks.ranks, top=np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="list metric 'novelty@2': expected 3 values"):
        SplitRanks(ranks.users, ranks.ranks, lists={"novelty@2": np.zeros(2)})


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
    ({"depth": 5, "ks": [1], "splits": {"test": {"users": [1, 2], "ranks": [1, 0], "top": [[1, 2], [3]]}}},
     "'splits.test.top' must hold 2 lists of item ids of one length"),
    ({"depth": 5, "ks": [1], "splits": {"test": {"users": [1], "ranks": [1], "top": [[-2]]}}},
     "'splits.test.top': item ids are >= 0, or -1 for an empty slot"),
    ({"depth": 5, "ks": [1], "splits": {"test": {"users": [1], "ranks": [1], "lists": {"novelty@1": [1, 2]}}}},
     "'splits.test.lists.novelty@1' must hold 1 numbers"),
    ({"depth": 5, "ks": [1], "items": 0, "splits": {"test": {"users": [1], "ranks": [1]}}},
     "key 'items' must be a positive integer"),
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
    head = head_items(training_interactions(split.train)[0])
    for stage, users in (("sft", SFT_USERS), ("baselines/sasrec", None)):
        folder = spec.run_path / stage
        figures, ranks = read_eval(folder), read_ranks(folder)
        assert ranks.depth == spec.eval.beam_width and ranks.ks == tuple(spec.eval.ks)
        for name in ("valid", "test"):
            examples = getattr(split, name)[:users]
            s = ranks.splits[name]
            assert s.users.tolist() == [ex.user for ex in examples]
            expected = {k: figures[name][k] for k in metric_names(spec.eval.ks)}
            assert metrics_from_ranks(s.ranks, spec.eval.ks) == pytest.approx(expected, abs=1e-12)
            assert figures[name]["users"] == len(examples)
            # Each top-10 list agrees with its rank: the target is at the rank, or not in the list.
            assert s.top.shape == (len(examples), 10) and ranks.items == 2420
            for ex, rank, top in zip(examples, s.ranks.tolist(), s.top.tolist()):
                assert (top.index(ex.target) if ex.target in top else -1) == rank
            # The beyond-accuracy figures are the stored lists': tail share recounted from the head items.
            tail = [np.mean([item not in head for item in top]) for top in s.top.tolist()]
            assert s.lists["tail_share@10"] == pytest.approx(tail) and figures[name]["tail_share@10"] == pytest.approx(
                np.mean(tail), abs=1e-12)
            assert figures[name]["coverage@10"] == len(set(s.top.ravel().tolist())) / ranks.items
            assert {m: figures[name][m] for m in s.lists} == pytest.approx({m: v.mean() for m, v in s.lists.items()})
    sasrec = read_eval(spec.run_path / "baselines/sasrec")
    assert sasrec["valid"]["recall@10"] > 0  # a trained model, so the check above is not all zeros
    every = sasrec["meta"]["all_users"]["test"]  # every user: the headline is all of them
    assert every == {k: sasrec["test"][k] for k in every}
