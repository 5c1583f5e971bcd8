"""benchmarks/teacher_weight.py: its choice by hand, and a real run's beams on every Office validation
user, where a weight's NDCG@10 is the same beam re-scored here by the run's SASRec."""
from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.teacher_weight import choose, main
from cluster.spec import dump_spec


def test_choose_the_best_weight_on_every_user_the_lighter_of_a_tie():
    assert choose({0.0: 0.05, 0.5: 0.07, 1.0: 0.07, 2.0: 0.06}) == 0.5
    assert choose({0.0: 0.05, 0.5: 0.04}) == 0.0


def test_a_folder_without_a_scorer_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit, match="scorer.json does not exist"):
        main(["--teacher", str(tmp_path), "--runs", str(tmp_path)])


def test_weights_on_every_validation_user(rerank_run, results_folder, tmp_path):
    from benchmarks.teacher_gate import beam
    from rl_system.reward.teacher import Teacher
    from sft.metrics import metrics_from_ranks, ranks_in_rows

    spec = tmp_path / "spec.yaml"
    spec.write_text(dump_spec(rerank_run))
    run = rerank_run.run_path
    teacher = run / "baselines/sasrec"
    assert main(["--spec", str(spec), "--teacher", str(teacher), "--runs", str(run), "--width", "12",
                 "--weights", "1.0", "--name", "tw"]) == 0
    rec = json.loads((results_folder / "tw.json").read_text())
    figures = rec["figures"]
    assert set(figures["taus"]) == {"0.0", "1.0"} and figures["users"] > 4000
    b = beam(spec, run, "valid", 12)
    t = Teacher(teacher, b.dataset.num_items, b.dataset.name)
    score = b.logp + t.candidate_logp([list(ex.history) for ex in b.examples], b.items)
    top = np.take_along_axis(b.items, np.argsort(-np.where(b.items >= 0, score, -np.inf), axis=1, kind="stable")[:, :10], 1)
    by_hand = metrics_from_ranks(ranks_in_rows(top, np.array([ex.target for ex in b.examples])), (10,))
    assert abs(figures["taus"]["1.0"]["runs"][0]["ndcg@10"] - by_hand["ndcg@10"]) < 1e-12
    means = {float(w): f["all mean_ndcg@10"] for w, f in figures["taus"].items()}
    assert figures["chosen"] == choose(means) and figures["teacher"] == str(teacher)
