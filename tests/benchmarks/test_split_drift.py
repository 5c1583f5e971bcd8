"""benchmarks/split_drift.py on a hand-built split (pure, no model)."""
import numpy as np

from benchmarks.split_drift import drift, fit, gains

SEQS = [[1, 2, 3, 4], [1, 2, 4, 3], [5, 3, 4, 1], [7, 1, 2, 6]]


def test_fit_counts_items_before_the_cut():
    pop, follow = fit(SEQS, cut=2)  # [1, 2], [1, 2], [5, 3], [7, 1]
    assert pop == [1, 2, 3, 5, 7]  # 3, 2, then ties by id
    assert follow == {1: [2], 5: [3], 7: [1]}


def test_gains_hit_and_ndcg():
    g = gains([[5, 7, 9], [1, 2]], [7, 3])
    assert g.tolist() == [[1.0, 1.0 / np.log2(3)], [0.0, 0.0]]


def test_drift_by_hand():
    scores = drift(SEQS)
    # valid: targets 3, 4, 4, 2 after 2, 2, 3, 1; only 1 -> [2] is in the fit.
    assert scores["transition valid"][:, 0].tolist() == [0.0, 0.0, 0.0, 1.0]
    # test: targets 4, 3, 1, 6 after 3, 4, 4, 2: none of those is followed in the same fit.
    assert scores["transition test"][:, 0].tolist() == [0.0, 0.0, 0.0, 0.0]
    # refit on every item but the last: 3 -> [4], 2 -> [3, 4]; 4 is never followed.
    assert scores["transition test +valid"][:, 0].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert scores["popularity valid"][:, 0].tolist() == [1.0, 0.0, 0.0, 1.0]  # top items 1, 2, 3, 5, 7


def test_main_records_the_figures_it_prints(results_folder, capsys):
    import json

    from benchmarks.results import REPO
    from benchmarks.split_drift import main

    assert main(["--data", str(REPO / "data/office"), "--name", "Office"]) == 0
    printed = capsys.readouterr().out
    rec = json.loads((results_folder / "split_drift_office.json").read_text())
    valid = rec["figures"]["scores"]["transition valid"]
    assert f"transition valid{valid['recall@10']:>18.4f}{valid['ndcg@10']:>10.4f}" in printed
    iv = rec["intervals"]["transition test - valid"]["recall@10"]
    assert iv["low"] <= iv["diff"] <= iv["high"] and rec["data"]["path"] == "data/office"
    assert rec["command"] == f"python benchmarks/split_drift.py --data {REPO / 'data/office'} --name Office"
