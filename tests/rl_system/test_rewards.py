import numpy as np
import pytest

from rl_system.reward.functions import (
    PARTIAL_CAP,
    parse_completions,
    parse_sids,
    prefix_match,
    residual_reward,
    score,
    sid_codes,
)

TARGET5 = "<a_1><b_2><c_3><d_4><e_5>"


def test_sid_codes_requires_depth_and_level_order():
    assert sid_codes("<a_12><b_200><c_7>", 3).tolist() == [12, 200, 7]
    assert sid_codes("<a_12><b_200>", 3) is None
    assert sid_codes("<a_12><c_200><b_7>", 3) is None
    assert sid_codes("<a_12><b_200><c_7><d_1>", 3) is None


def test_direct_parse_and_format_gate():
    parsed = parse_completions(["<a_1><b_2><c_3>", " <a_1><b_2><c_9>\n", "<a_1><b_2>", "hello <a_1><b_2><c_3>", ""],
                               "direct", 3)
    assert parsed.format_ok.tolist() == [True, True, False, False, False]
    assert parsed.codes[1].tolist() == [1, 2, 9]
    assert (parsed.codes[2:] == -1).all()


def test_reasoning_format_gate():
    ok = "<think>she buys pens</think><answer><a_1><b_2><c_3></answer>"
    cases = [
        ok,
        "<think>\nmulti\nline</think>\n<answer><a_1><b_2><c_3></answer>\n",
        "<answer><a_1><b_2><c_3></answer>",  # no think block
        "<think>x</think><answer><a_1><b_2><c_3>",  # unclosed answer
        "<think>x</think><answer><a_1><b_2><c_3></answer> trailing words",
        "<think>a</think><think>b</think><answer><a_1><b_2><c_3></answer>",  # two think blocks
        "<think>x <answer><a_9><b_9><c_9></answer></think><answer><a_1><b_2><c_3></answer>",  # answer hidden in think
        "<think>x</think><answer>the pen</answer>",
    ]
    parsed = parse_completions(cases, "reasoning", 3)
    assert parsed.format_ok.tolist() == [True, True, False, False, False, False, False, False]
    assert parsed.codes[0].tolist() == [1, 2, 3]


def test_bad_mode_is_rejected():
    with pytest.raises(ValueError, match="mode"):
        parse_completions(["<a_1>"], "chat", 1)


def test_prefix_match_stops_at_first_mismatch_and_ignores_unparsed():
    target = np.array([1, 2, 3, 4])
    pred = np.array([[1, 2, 3, 4], [1, 2, 9, 4], [9, 2, 3, 4], [1, 2, 3, 9], [-1, -1, -1, -1]])
    assert prefix_match(pred, target).tolist() == [4, 2, 0, 3, 0]


def test_residual_reward_with_dedup_level_matches_official_numbers():
    # 5 levels, the last one the dedup ordinal: H = 4 semantic levels.
    r = residual_reward(np.arange(6), depth=5, semantic_levels=4, beta=0.5)
    np.testing.assert_allclose(r, [0.0, 0.5, 0.7071068, 0.8660254, 0.95, 1.0], atol=1e-7)


def test_residual_reward_without_dedup_level():
    r = residual_reward(np.arange(4), depth=3, semantic_levels=3, beta=0.5)
    np.testing.assert_allclose(r, [0.0, np.sqrt(1 / 3), np.sqrt(2 / 3), 1.0])
    # beta = 1 is linear in the matched share.
    np.testing.assert_allclose(residual_reward(np.arange(4), 3, 3, beta=1.0), [0, 1 / 3, 2 / 3, 1])
    # A very deep SID: 19 of 20 would be 0.975, but a partial match never passes the cap.
    assert residual_reward(np.array([19]), 20, 20)[0] == PARTIAL_CAP


def test_residual_reward_rejects_bad_levels():
    with pytest.raises(ValueError, match="semantic_levels"):
        residual_reward(np.array([1]), depth=3, semantic_levels=4)


def test_score_batch_dedup_partial_match():
    completions = [TARGET5, "<a_1><b_2><c_3><d_4><e_6>", "<a_1><b_7><c_3><d_4><e_5>", "<a_2><b_2><c_3><d_4><e_5>",
                   "<a_1><b_2>"]
    parsed = parse_completions(completions, "direct", 5)
    targets = np.tile(sid_codes(TARGET5, 5), (5, 1))
    out = score(parsed, targets, semantic_levels=4)
    assert out.exact.tolist() == [True, False, False, False, False]
    assert out.lcp.tolist() == [5, 4, 1, 0, 0]
    np.testing.assert_allclose(out.residual, [1.0, 0.95, 0.5, 0.0, 0.0])
    assert out.binary.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert out.beam is None


def test_beam_reward_is_best_candidate_and_gated_by_format():
    completions = ["<think>t</think><answer><a_1><b_9><c_9></answer>",
                   "<think>t</think><answer><a_5><b_5><c_5></answer>",
                   "no format at all"]
    parsed = parse_completions(completions, "reasoning", 3)
    candidates = [["<a_1><b_9><c_9>", "<a_1><b_2><c_9>", "<a_1><b_2><c_3>"],
                  ["<a_1><b_2><c_9>", "<a_1><b_5><c_5>", "garbage"],
                  ["<a_1><b_2><c_3>", "<a_1><b_2><c_3>", "<a_1><b_2><c_3>"]]
    beams = parse_sids([s for row in candidates for s in row], 3).codes.reshape(3, 3, 3)
    out = score(parsed, np.tile([1, 2, 3], (3, 1)), semantic_levels=3, beams=beams)
    np.testing.assert_allclose(out.residual, [np.sqrt(1 / 3), 0.0, 0.0])
    np.testing.assert_allclose(out.beam, [1.0, np.sqrt(2 / 3), 0.0])


def test_score_shape_mismatch_is_a_clear_error():
    parsed = parse_completions(["<a_1><b_2>"], "direct", 2)
    with pytest.raises(ValueError, match="targets have shape"):
        score(parsed, np.zeros((2, 2)), semantic_levels=2)
    with pytest.raises(ValueError, match="beams have shape"):
        score(parsed, np.zeros((1, 2)), semantic_levels=2, beams=np.zeros((1, 2)))


def test_semantic_levels_detects_a_dedup_level():
    from rl_system.reward.functions import semantic_levels

    dedup = np.array([[1, 2, 0], [1, 2, 1], [3, 4, 0], [1, 5, 0], [1, 2, 2]])
    assert semantic_levels(dedup) == 2
    no_dedup = np.array([[1, 2, 7], [1, 2, 1], [3, 4, 0]])
    assert semantic_levels(no_dedup) == 3
    gap = np.array([[1, 2, 0], [1, 2, 2]])  # ordinal 1 missing: not a dedup level
    assert semantic_levels(gap) == 3
    assert semantic_levels(np.array([[4], [5]])) == 1


def test_semantic_levels_of_bundled_indexes():
    from pathlib import Path

    from indexing.sid import read_index_codes
    from rl_system.reward.functions import semantic_levels

    office = read_index_codes(Path(__file__).resolve().parents[2] / "data/office/Office.unitok5.index.json")
    assert semantic_levels(np.array(list(office.values()))) == 5


def test_ranking_penalty_by_hand():
    """G = 4: w = 1, 1/log2 3, 1/2, 1/log2 5 (sum 2.5616). The policy's order by logprob is
    completion 2, 0, 1, 3; completion 1 is the hit. Misses lose w(rank) / sum."""
    from rl_system.reward.functions import ranking_penalty

    hits = np.array([[False, True, False, False], [False, False, False, False]])
    logprobs = np.array([[-1.0, -2.0, -0.5, -3.0], [-1.0, -2.0, -0.5, -3.0]])
    out = ranking_penalty(hits, logprobs)
    total = 1 + 1 / np.log2(3) + 0.5 + 1 / np.log2(5)
    np.testing.assert_allclose(out[0], [-(1 / np.log2(3)) / total, 0.0, -1 / total, -(1 / np.log2(5)) / total])
    np.testing.assert_allclose(out[0], [-0.246302, 0.0, -0.390380, -0.168128], atol=1e-6)
    assert (out[1] == 0).all()  # no hit: nothing to rank below


def test_ranking_penalty_ties_keep_the_group_order_and_shapes_are_checked():
    from rl_system.reward.functions import ranking_penalty

    out = ranking_penalty(np.array([[True, False, False]]), np.zeros((1, 3)))
    total = 1 + 1 / np.log2(3) + 0.5
    np.testing.assert_allclose(out[0], [0.0, -(1 / np.log2(3)) / total, -0.5 / total])
    with pytest.raises(ValueError, match="must both be"):
        ranking_penalty(np.zeros((2, 3), bool), np.zeros((2, 4)))
