"""benchmarks/teacher_gate.py's rates, by hand."""
import numpy as np

from benchmarks.teacher_gate import gate_rates


def test_rates_against_the_top_and_all_negatives():
    target = np.array([-1.0, -2.0, -3.0])
    negatives = np.array([[-2.0, -0.5], [-1.5, -3.0], [-4.0, -np.inf]])  # policy order; -inf: no negative
    r = gate_rates(target, negatives)
    assert r == {"above_top_negative": 2 / 3, "above_all_negatives": 1 / 3, "users": 3}
