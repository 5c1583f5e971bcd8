import numpy as np
import pytest

from rl_system import advantages
from rl_system.advantages import dr_grpo, grpo, passk_bonus_table, srpo
from rl_system.reward.functions import parse_completions, score, sid_codes


def test_passk_bonus_hand_values():
    # n = 6, K = 4, c = 1: rho = 1 - C(5,4)/C(6,4) = 2/3, sigma = sqrt(2)/3,
    # hit = (1/3)/sigma = 0.7071068, miss = (1 - 2/3 - C(4,3)/C(5,3))/sigma = (1/3 - 0.4)/sigma = -0.1414214.
    hit, miss = passk_bonus_table(6, 4)
    assert hit[1] == pytest.approx(0.7071068, abs=1e-5)
    assert miss[1] == pytest.approx(-0.1414214, abs=1e-5)


def test_passk_bonus_is_zero_at_no_hits_and_all_hits():
    hit, miss = passk_bonus_table(8, 4)
    assert miss[0] == 0.0
    assert hit[8] == 0.0


def test_passk_rejects_k_larger_than_group():
    with pytest.raises(ValueError, match="pass@k"):
        passk_bonus_table(3, 4)


def test_srpo_one_hit_hand_values():
    rewards = np.array([[1.0, 0.5, 0.5, 0.0, 0.0, 0.0]])
    hits = np.array([[1, 0, 0, 0, 0, 0]])
    # dense: mean 1/3, sample std 0.4082483 -> [1.6329932, 0.4082483, 0.4082483, -0.8164966 x3]
    expected = [1.6329932 + 0.7071068, 0.4082483 - 0.1414214, 0.4082483 - 0.1414214] + [-0.8164966 - 0.1414214] * 3
    np.testing.assert_allclose(srpo(rewards, hits, k=4), [expected], atol=1e-5)


def test_srpo_no_hits_is_standardized_residual():
    rewards = np.array([[0.5, 0.0, 0.0, 0.0, 0.0, 0.0]])
    # mean 1/12, sample std sqrt((25/144 + 5/144)/5) = sqrt(1/24) = 0.2041241
    expected = np.array([5 / 12, -1 / 12, -1 / 12, -1 / 12, -1 / 12, -1 / 12]) / 0.2041241
    np.testing.assert_allclose(srpo(rewards, np.zeros((1, 6)), k=4), [expected], rtol=1e-5)


def test_srpo_all_hits_is_zero():
    np.testing.assert_allclose(srpo(np.ones((1, 6)), np.ones((1, 6)), k=4), np.zeros((1, 6)), atol=1e-9)


def test_srpo_dedup_partial_match_end_to_end():
    # 5-level SIDs with a dedup level: exact, all semantic levels but the wrong ordinal, one level, nothing.
    target = "<a_1><b_2><c_3><d_4><e_0>"
    completions = [target, "<a_1><b_2><c_3><d_4><e_1>", "<a_1><b_9><c_3><d_4><e_0>", "<a_7><b_2><c_3><d_4><e_0>"]
    out = score(parse_completions(completions, "direct", 5), np.tile(sid_codes(target, 5), (4, 1)), semantic_levels=4)
    np.testing.assert_allclose(out.residual, [1.0, 0.95, 0.5, 0.0])
    # rewards [1, .95, .5, 0]: mean 0.6125, sample std 0.4661455 -> dense [0.8312854, 0.7240228, -0.2413409, -1.3139673]
    # K = 2, n = 4, c = 1: rho = 1 - C(3,2)/C(4,2) = 0.5, sigma = 0.5; hit = 1.0; miss = (0.5 - C(2,1)/C(3,1))/0.5 = -1/3
    adv = srpo(out.residual[None], out.exact[None], k=2)
    np.testing.assert_allclose(adv, [[0.8312854 + 1.0, 0.7240228 - 1 / 3, -0.2413409 - 1 / 3, -1.3139673 - 1 / 3]],
                               atol=1e-5)


def test_grpo_and_dr_grpo_hand_values():
    rewards = np.array([[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]])
    # group 1: mean 0.25, sample std 0.5; group 2: constant -> 0 everywhere.
    np.testing.assert_allclose(grpo(rewards), [[1.5, -0.5, -0.5, -0.5], [0, 0, 0, 0]], atol=1e-5)
    np.testing.assert_allclose(dr_grpo(rewards), [[0.75, -0.25, -0.25, -0.25], [0, 0, 0, 0]])


def test_dispatch_and_errors():
    rewards = np.array([[1.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(advantages.compute("grpo", rewards), grpo(rewards))
    with pytest.raises(ValueError, match="needs the exact hits"):
        advantages.compute("srpo", rewards)
    with pytest.raises(ValueError, match="unknown advantage estimator"):
        advantages.compute("ppo", rewards)
    with pytest.raises(ValueError, match="G >= 2"):
        grpo(np.array([1.0, 2.0]))
