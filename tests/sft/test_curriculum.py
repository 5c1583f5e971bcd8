"""Curriculum schedules: GREAM's p_insert against hand-computed values, and the batch plans."""
import pytest

from sft.curriculum import ALIGN, REASON, epoch_plan, is_curriculum_epoch, p_insert


@pytest.mark.parametrize("i,n_align,n_reason,gamma,expected", [
    (1, 10, 4, 1.5, 0.06),     # 1.5 * 0.1 * 0.4
    (5, 10, 4, 1.5, 0.30),     # 1.5 * 0.5 * 0.4
    (10, 10, 4, 1.5, 0.60),    # 1.5 * 1.0 * 0.4
    (3, 8, 8, 1.5, 0.5625),    # 1.5 * 0.375 * 1
    (6, 8, 8, 1.5, 1.0),       # 1.5 * 0.75 = 1.125 -> capped at 1
    (5, 10, 20, 1.5, 1.0),     # 1.5 * 0.5 * 2 = 1.5 -> capped
    (4, 10, 5, 1.0, 0.2),      # 1.0 * 0.4 * 0.5
    (7, 10, 0, 1.5, 0.0),
])
def test_p_insert_hand_values(i, n_align, n_reason, gamma, expected):
    assert p_insert(i, n_align, n_reason, gamma) == pytest.approx(expected)


def test_curriculum_epochs_are_the_first_two_but_never_the_last():
    assert [is_curriculum_epoch(e, 3) for e in range(3)] == [True, True, False]
    assert [is_curriculum_epoch(e, 5) for e in range(5)] == [True, True, False, False, False]
    assert [is_curriculum_epoch(e, 2) for e in range(2)] == [True, False]
    assert [is_curriculum_epoch(e, 1) for e in range(1)] == [False]


def _aligned_in_order(plan, n_align):
    return [s.batch for s in plan if s.kind == ALIGN] == list(range(n_align))


def test_gream_plan_inserts_after_alignment_batches_at_p_insert():
    n_align, n_reason = 40, 10
    counts = [0.0] * n_align
    trials = 400
    for seed in range(trials):
        plan = epoch_plan("gream", 0, 3, n_align, n_reason, 1.5, seed)
        assert _aligned_in_order(plan, n_align) and plan[0].kind == ALIGN
        i = 0
        for prev, step in zip(plan, plan[1:]):
            if prev.kind == ALIGN:
                i = prev.batch + 1
                counts[i - 1] += step.kind == REASON
            else:
                assert step.kind == ALIGN  # at most one reasoning batch per alignment batch
    for i in (5, 20, 40):
        expected = p_insert(i, n_align, n_reason, 1.5)  # 0.046875, 0.1875, 0.375
        assert abs(counts[i - 1] / trials - expected) < 4 * (expected * (1 - expected) / trials) ** 0.5 + 1e-9


def test_gream_plan_cycles_reasoning_batches_when_p_saturates():
    plan = epoch_plan("gream", 1, 3, 4, 20, 1.5, 0)  # p = min(1, 1.5 * i/4 * 5) = 1 for every i
    assert [(s.kind, s.batch) for s in plan] == [
        (ALIGN, 0), (REASON, 0), (ALIGN, 1), (REASON, 1), (ALIGN, 2), (REASON, 2), (ALIGN, 3), (REASON, 3)]


def test_last_epoch_and_uniform_schedule_mix_everything_once():
    for schedule, epoch in (("gream", 2), ("uniform", 0)):
        plan = epoch_plan(schedule, epoch, 3, 30, 12, 1.5, 7)
        assert sorted((s.kind, s.batch) for s in plan) == sorted(
            [(ALIGN, b) for b in range(30)] + [(REASON, b) for b in range(12)])
        assert _aligned_in_order(plan, 30)
        assert plan != sorted(plan, key=lambda s: s.kind)  # actually shuffled


def test_sequential_and_alignment_only():
    assert [(s.kind, s.batch) for s in epoch_plan("sequential", 0, 3, 2, 2)] == [
        (ALIGN, 0), (ALIGN, 1), (REASON, 0), (REASON, 1)]
    for schedule in ("gream", "uniform", "sequential"):
        assert [(s.kind, s.batch) for s in epoch_plan(schedule, 0, 3, 3, 0)] == [(ALIGN, 0), (ALIGN, 1), (ALIGN, 2)]


def test_plans_are_seeded():
    a = epoch_plan("gream", 0, 3, 50, 25, 1.5, 3)
    assert a == epoch_plan("gream", 0, 3, 50, 25, 1.5, 3)
    assert a != epoch_plan("gream", 0, 3, 50, 25, 1.5, 4)


def test_bad_schedule_is_named():
    with pytest.raises(ValueError, match="sft.curriculum: 'random'"):
        epoch_plan("random", 0, 3, 2, 2)
