"""benchmarks/objectives.py's figures on real evaluations (tests/eval_fixtures.py): the seed means are
the evaluations' own, and the paired intervals against the SFT model are the users' differences."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.objectives import MARGIN, SHOWN, against_sft, choose, format_report, means
from cluster.eval_record import read_eval
from gream.compare import load_stage
from gream.paired import align
from tests.eval_fixtures import SFT_USERS


def test_seed_means_are_the_evaluations_figures(evaluated_run):
    run = evaluated_run.run_path
    sft = load_stage(f"{run}:sft")
    for split in ("valid", "test"):
        figures = read_eval(run / "sft")
        got = means([sft, sft], split)  # two "seeds" of one model: their mean is its figure
        assert got == pytest.approx({"ndcg@10": figures[split]["ndcg@10"], "tail_share@10": figures[split]["tail_share@10"],
                                     "tail recall@10": figures["segments"][split]["tail"]["recall@10"],
                                     "coverage@10": figures[split]["coverage@10"]}, abs=1e-12)


def test_intervals_against_sft_are_the_users_differences(evaluated_run):
    run = evaluated_run.run_path
    sft, rl, sasrec = (load_stage(f"{run}:{stage}") for stage in ("sft", "rl", "baselines/sasrec"))
    same = against_sft([rl], sft, 200)  # rl/ holds the SFT model on more users
    for got in same.values():
        assert got["users"] == SFT_USERS and 0 < got["tail_users"] < SFT_USERS
        assert all(got[m] == {"diff": 0.0, "low": 0.0, "high": 0.0, "verdict": "no difference"} for m in SHOWN)
    other = against_sft([sasrec], sft, 200)
    for split, got in other.items():
        a, b = sft.ranks.splits[split], sasrec.ranks.splits[split]
        ia, ib = align(a.users, b.users)
        want = float(np.mean(b.lists["tail_share@10"][ib] - a.lists["tail_share@10"][ia]))
        assert got["tail_share@10"]["diff"] == pytest.approx(want)
        assert got["tail_share@10"]["low"] <= want <= got["tail_share@10"]["high"]
    result = {"objective": "tail", "date": "today", "load": [1.0], "sft": {s: means([sft], s) for s in ("valid", "test")},
              "weights": {"0.5": {"selected_steps": [10], "figures": {s: means([sasrec], s) for s in ("valid", "test")},
                                  "rl_minus_sft": other}}, "chosen": {"weight": "0.5", "rule": "the rule"}}
    text = format_report(result)
    line = next(row for row in text.splitlines() if row.strip().startswith("tail   0.5") and "test" not in row)
    assert f"tail_share@10 {other['valid']['tail_share@10']['diff']:+.4f}" in line and "(steps [10])" in line


def diffs(ndcg_low: float, share: float) -> dict:
    return {"valid": {"ndcg@10": {"diff": ndcg_low + 0.001, "low": ndcg_low, "high": ndcg_low + 0.002},
                      "tail_share@10": {"diff": share, "low": share - 0.01, "high": share + 0.01}}}


def test_the_chosen_weight_has_the_largest_tail_gain_among_the_non_inferior():
    # 2 gains most but its NDCG interval reaches below -MARGIN; 1 gains more than 0.5; 0 gains nothing
    intervals = {"0": diffs(-0.001, 0.0), "0.5": diffs(-0.002, 0.02), "1": diffs(-MARGIN + 0.0005, 0.03),
                 "2": diffs(-MARGIN - 0.0005, 0.08)}
    assert choose(intervals)["weight"] == "1"
    assert choose({"2": diffs(-0.01, 0.08)})["weight"] is None
