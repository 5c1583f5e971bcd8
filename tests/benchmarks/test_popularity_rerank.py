"""benchmarks/popularity_rerank.py: its choice by hand, and a real run's beams on every Office
validation user, where each weight's NDCG@10 is the same beam re-scored here by the training counts."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np

from benchmarks.popularity_rerank import choose, main
from cluster.spec import dump_spec


def interval(low: float, high: float) -> dict:
    return {"all": {"diff": (low + high) / 2, "low": low, "high": high}}


def test_choose_the_best_tail_among_the_taus_without_a_loss():
    intervals = {0.0: interval(0, 0), 0.1: interval(-0.001, 0.001), 0.2: interval(-0.002, -0.0001), 0.3: interval(-0.001, 0.0)}
    # 0.2 has the best tail but loses on every user; 0.3 and 0.1 tie on the tail: the lighter one
    assert choose(intervals, {0.0: 0.05, 0.1: 0.06, 0.2: 0.08, 0.3: 0.06}) == 0.1
    assert choose(intervals, {0.0: 0.05, 0.1: 0.04, 0.2: 0.08, 0.3: 0.03}) == 0.0


def test_taus_on_every_validation_user(rerank_run, results_folder, tmp_path):
    from benchmarks.teacher_gate import beam
    from indexing.segments import training_items
    from sft.metrics import metrics_from_ranks, ranks_in_rows

    spec = tmp_path / "spec.yaml"
    spec.write_text(dump_spec(rerank_run))
    run = rerank_run.run_path
    assert main(["--spec", str(spec), "--runs", str(run), "--width", "12", "--taus", "0.5", "--name", "pr"]) == 0
    rec = json.loads((results_folder / "pr.json").read_text())
    figures = rec["figures"]
    assert set(figures["taus"]) == {"0.0", "0.5"} and figures["users"] > 4000 and 0 < figures["tail_users"] < figures["users"]
    assert rec["intervals"]["tau 0 - tau 0, all"]["diff"] == 0.0
    b = beam(spec, run, "valid", 12)
    bought = Counter(item for seq in training_items(b.train).values() for item in seq)
    score = np.where(b.items >= 0, b.logp - 0.5 * np.log1p([[bought[i] for i in row] for row in b.items]), -np.inf)
    top = np.take_along_axis(b.items, np.argsort(-score, axis=1, kind="stable")[:, :10], 1)
    by_hand = metrics_from_ranks(ranks_in_rows(top, np.array([ex.target for ex in b.examples])), (10,))
    assert abs(figures["taus"]["0.5"]["runs"][0]["ndcg@10"] - by_hand["ndcg@10"]) < 1e-12
    tails = {t: f["tail mean_ndcg@10"] for t, f in figures["taus"].items()}
    assert figures["chosen"] == choose({float(t): {"all": rec["intervals"][f"tau {float(t):g} - tau 0, all"]}
                                        for t in tails}, {float(t): v for t, v in tails.items()})
