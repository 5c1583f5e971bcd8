"""rl_system.rerank's re-scoring of a beam (eval.rerank, benchmarks/teacher_rerank.py), against ranks
and orders worked out by hand."""
from __future__ import annotations

import math

import numpy as np

from rl_system.rerank import PopularityPrior, rerank, rerank_order

ITEMS = np.array([[7, 3, 9, -1],
                  [4, 5, 6, 8]])
POLICY = np.log(np.array([[0.5, 0.3, 0.2, 1.0],
                          [0.4, 0.3, 0.2, 0.1]]))
TEACHER = np.log(np.array([[0.01, 0.2, 0.05, 0.9],  # the empty slot's score must never count
                           [0.1, 0.1, 0.4, 0.3]]))
TARGETS = np.array([3, 8])


def test_weight_zero_keeps_the_beams_order():
    assert rerank(ITEMS, POLICY, TEACHER, TARGETS, 0.0).tolist() == [1, 3]


def test_mixed_scores_by_hand():
    # user 0: 0.5*0.01^1 = 0.005, 0.3*0.2 = 0.06, 0.2*0.05 = 0.01 -> item 3 first
    # user 1: 0.4*0.1 = 0.04, 0.3*0.1 = 0.03, 0.2*0.4 = 0.08, 0.1*0.3 = 0.03 -> 6, 4, then 5 and 8 tie: beam order
    assert rerank(ITEMS, POLICY, TEACHER, TARGETS, 1.0).tolist() == [0, 3]
    # weight 2: user 1: 0.4*0.01 = 0.004, 0.3*0.01 = 0.003, 0.2*0.16 = 0.032, 0.1*0.09 = 0.009 -> 6, 8, 4, 5
    assert rerank(ITEMS, POLICY, TEACHER, TARGETS, 2.0).tolist() == [0, 1]


def test_teacher_alone_and_a_target_outside_the_beam():
    assert rerank(ITEMS, POLICY, TEACHER, TARGETS, math.inf).tolist() == [0, 1]
    # weight 0.25, user 1: 0.4*0.1^0.25 = 0.225 leads 0.3*0.1^0.25 = 0.169, 0.2*0.4^0.25 = 0.159, 0.1*0.3^0.25 = 0.074
    assert rerank(ITEMS, POLICY, TEACHER, np.array([11, 4]), 0.25).tolist() == [-1, 0]


def test_the_order_keeps_the_best_depth_and_marks_a_short_beam():
    # weight 1, by the products above: user 0 ranks columns 1 (0.06), 2 (0.01), 0 (0.005), then its
    # empty slot; user 1 ranks 2 (0.08), 0 (0.04), then 1 and 3 tie at 0.03 and keep the beam's order.
    assert rerank_order(ITEMS, POLICY, TEACHER, 1.0, 4).tolist() == [[1, 2, 0, -1], [2, 0, 1, 3]]
    assert rerank_order(ITEMS, POLICY, TEACHER, 1.0, 2).tolist() == [[1, 2], [2, 0]]
    # weight 0: the beam's own order, the empty slot last even though its policy score is the highest.
    assert rerank_order(ITEMS, POLICY, TEACHER, 0.0, 4).tolist() == [[0, 1, 2, -1], [0, 1, 2, 3]]


def test_popularity_prior_by_hand():
    # training interactions per item id 0..9; items 3 and 7 popular, 9 never bought
    counts = np.array([0, 0, 0, 9, 2, 2, 0, 19, 1, 0])
    prior = PopularityPrior(counts).candidate_logp(None, ITEMS)
    assert prior[0, :3].tolist() == [-math.log(20), -math.log(10), 0.0] and prior[0, 3] == -math.inf
    # weight 1: user 0: 0.5/20 = 0.025, 0.3/10 = 0.03, 0.2/1 = 0.2 -> 9, 3, 7
    # user 1: 0.4/3, 0.3/3 = 0.1, 0.2/1 = 0.2, 0.1/2 = 0.05 -> 6, 4, 5, 8
    assert rerank_order(ITEMS, POLICY, prior, 1.0, 4).tolist() == [[2, 1, 0, -1], [2, 0, 1, 3]]
    # weight 0.5: user 0: 0.5/sqrt(20) = 0.112, 0.3/sqrt(10) = 0.095, 0.2 -> 9, 7, 3
    assert rerank_order(ITEMS, POLICY, prior, 0.5, 2).tolist()[0] == [2, 0]
