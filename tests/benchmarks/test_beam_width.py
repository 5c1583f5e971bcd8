"""benchmarks/beam_width.py: its choice by hand, and a real run's beams on every Office
validation user, where each width's NDCG@10 is checked against the same beam ranked here."""
from __future__ import annotations

import json

import numpy as np

from benchmarks.beam_width import choose, main
from cluster.spec import dump_spec


def test_choose_highest_mean_narrower_on_a_tie():
    assert choose({10: 0.05, 20: 0.06, 50: 0.055}) == 20
    assert choose({50: 0.06, 20: 0.06, 10: 0.05}) == 20


def test_widths_on_every_validation_user(rerank_run, results_folder, tmp_path):
    from benchmarks.teacher_gate import beam
    from sft.metrics import metrics_from_ranks, ranks_in_rows

    spec = tmp_path / "spec.yaml"
    spec.write_text(dump_spec(rerank_run))
    run = rerank_run.run_path
    assert main(["--spec", str(spec), "--runs", str(run), "--widths", "12", "--name", "bw"]) == 0
    rec = json.loads((results_folder / "bw.json").read_text())
    figures, base = rec["figures"], rerank_run.eval.beam_width
    assert set(figures["widths"]) == {str(base), "12"} and figures["users"] > 4000
    means = {int(w): f["mean_ndcg@10"] for w, f in figures["widths"].items()}
    assert figures["chosen"] == choose(means)
    assert rec["intervals"][f"width {base} - width {base}"]["diff"] == 0.0
    b = beam(spec, run, "valid", 12)
    by_hand = metrics_from_ranks(ranks_in_rows(b.items, np.array([ex.target for ex in b.examples])), (10,))
    assert abs(figures["widths"]["12"]["runs"][0]["ndcg@10"] - by_hand["ndcg@10"]) < 1e-12
