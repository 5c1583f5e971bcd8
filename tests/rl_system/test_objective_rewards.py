"""The rewards beyond accuracy (rl.objectives) against values worked out by hand, their spec checks,
and a reward replica holding the items' popularity answering through its real ZMQ socket."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from cluster.objectives_spec import ObjectivesSpec
from cluster.spec import SpecError, load_spec
from indexing.dataset import Example
from indexing.segments import Popularity
from rl_system.messages import RewardReply
from rl_system.reward.client import RewardClient
from rl_system.reward.objectives import (
    head_exposure_penalty,
    item_tables,
    objective_rewards,
    popularity_fields,
    prefix_diversity,
    tail_bonus,
)
from rl_system.reward.server import RewardServer
from tests.reward_fixtures import COMPLETIONS, REPO, TOKEN, index_path  # noqa: F401

# The toy catalogue's training interactions (tests/reward_fixtures.py: items 0..3): item 0 three
# times (user 1's first history and two targets), items 1 and 2 once, item 3 never. 5 interactions
# over 4 ids: add-one shares 4/9, 2/9, 2/9, 1/9; the head is round(0.2 x 3 items seen) = 1 item, 0.
TRAIN = [Example(1, (0,), 0), Example(1, (0, 0), 0), Example(2, (1,), 2)]
NOVELTY = [math.log2(9 / 4) / math.log2(9), math.log2(9 / 2) / math.log2(9), math.log2(9 / 2) / math.log2(9), 1.0]


def test_tail_bonus_pays_hits_and_near_hits_by_levels_matched():
    exact, lcp, value = [True, False, False, False], [3, 2, 1, 0], [0.5, 1.0, 0.8, 1.0]
    np.testing.assert_allclose(tail_bonus(exact, lcp, value, depth=3, near_levels=2), [0.5, 2 / 3, 0.0, 0.0])
    np.testing.assert_allclose(tail_bonus(exact, lcp, value, depth=3, near_levels=1), [0.5, 2 / 3, 0.8 / 3, 0.0])


def test_prefix_diversity_shares_each_prefix_among_the_group_holding_it():
    groups = np.array([[[1, 2, 0], [1, 3, 0], [4, 2, 0], [-1, -1, -1]], [[1, 2, 0]] * 4])
    np.testing.assert_allclose(prefix_diversity(groups, 1), [[0.5, 0.5, 1.0, 0.0], [0.25] * 4])
    np.testing.assert_allclose(prefix_diversity(groups, 2), [[1.0, 1.0, 1.0, 0.0], [0.25] * 4])


def test_head_exposure_penalises_misses_on_head_items_named_beyond_their_share():
    # Item 5 (head, training share 0.25) is 3 of the 4 named completions: exposure 0.75, penalty
    # 1 - 0.25 / 0.75; one of its three is the hit. Item 7 (share 0.5) is named at 0.25: no penalty.
    items, tail = [5, 5, 5, 7, -1], [False] * 5
    share, exact = [0.25, 0.25, 0.25, 0.5, 0.0], [False, False, True, False, False]
    np.testing.assert_allclose(head_exposure_penalty(items, tail, share, exact), [-2 / 3, -2 / 3, 0.0, 0.0, 0.0])
    # The same exposure on a tail item costs nothing.
    np.testing.assert_allclose(head_exposure_penalty(items, [True] * 5, share, exact), [0.0] * 5)


def test_popularity_fields_by_hand():
    got = popularity_fields(item_tables(Popularity.from_train(TRAIN, 4)), np.array([0, 1, 3, -1]))
    np.testing.assert_allclose(got["novelty"], [NOVELTY[0], NOVELTY[1], 1.0, 0.0])
    assert got["tail"].tolist() == [False, True, True, False]
    np.testing.assert_allclose(got["share"], [0.6, 0.2, 0.0, 0.0])


def test_weights_add_the_objectives_the_spec_turns_on():
    codes = np.array([[1, 2, 0], [1, 2, 1], [4, 2, 0], [-1, -1, -1]])  # items 0, 1, 3, none; the target 0
    reply = RewardReply(format_ok=codes[:, 0] >= 0, codes=codes, item=np.array([0, 1, 3, -1]),
                        exact=np.array([True, False, False, False]), lcp=np.array([3, 2, 0, 0]), residual=np.zeros(4),
                        binary=np.zeros(4), beam=None,
                        **popularity_fields(item_tables(Popularity.from_train(TRAIN, 4)), np.array([0, 1, 3, -1])))
    assert objective_rewards(ObjectivesSpec(), reply, 4).tolist() == [0.0] * 4
    tail = [NOVELTY[0], 2 / 3 * NOVELTY[1], 0.0, 0.0]  # near_levels 1: item 3 (lcp 0) earns nothing
    diversity = [0.5, 0.5, 1.0, 0.0]
    np.testing.assert_allclose(objective_rewards(ObjectivesSpec(tail=2.0, diversity=0.5), reply, 4),
                               2.0 * np.array(tail) + 0.5 * np.array(diversity))
    tail_items = [0.0, 2 / 3, 0.0, 0.0]  # tail_form tail: 1 for a tail item; item 0 is the head
    np.testing.assert_allclose(objective_rewards(ObjectivesSpec(tail=1.0, tail_form="tail"), reply, 4), tail_items)
    # novelty: every named item's own novelty, hit or not; the row naming no item earns nothing
    np.testing.assert_allclose(objective_rewards(ObjectivesSpec(novelty=0.5), reply, 4),
                               0.5 * np.array([NOVELTY[0], NOVELTY[1], 1.0, 0.0]))
    # Item 0 is the only named head item: exposure 1/3 below its share 0.6, no penalty.
    assert objective_rewards(ObjectivesSpec(head_exposure=1.0), reply, 4).tolist() == [0.0] * 4


def test_objective_settings_are_checked_naming_the_key(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("name: x\nrl:\n  objectives: {tail: -0.5}\n")
    with pytest.raises(SpecError, match=r"key 'rl.objectives.tail': .*greater than or equal to 0"):
        load_spec(spec)
    res = subprocess.run([sys.executable, "-m", "gream.cli", "config", "show", str(REPO / "configs/demo.yaml"),
                          "--set", "rl.objectives.tail_form=popular"], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 2 and "rl.objectives.tail_form" in res.stderr
    assert ObjectivesSpec(near_levels=4).level_problem(3) == (
        "key 'rl.objectives.near_levels': 4 levels, but the index's SIDs have 3")
    assert ObjectivesSpec(near_levels=3, diversity_levels=3).level_problem(3) is None


def test_a_replica_with_popularity_answers_with_it_through_zmq(index_path):  # noqa: F811
    server = RewardServer(str(index_path), token=TOKEN, popularity=Popularity.from_train(TRAIN, 4))
    plain = RewardServer(str(index_path), token=TOKEN)
    try:
        with RewardClient([server.endpoint()], token=TOKEN, timeout_s=10) as client:
            reply = client.score(COMPLETIONS, [0] * 4)
        with RewardClient([plain.endpoint()], token=TOKEN, timeout_s=10) as client:
            without = client.score(COMPLETIONS, [0] * 4)
    finally:
        server.stop()
        plain.stop()
    # Items named: 0 (the hit), 1 (its dedup sibling, lcp 2), none, none.
    assert reply.item.tolist() == [0, 1, -1, -1]
    np.testing.assert_allclose(reply.novelty, [NOVELTY[0], NOVELTY[1], 0.0, 0.0])
    assert reply.tail.tolist() == [False, True, False, False]
    np.testing.assert_allclose(reply.share, [0.6, 0.2, 0.0, 0.0])
    assert without.novelty is None and without.tail is None and without.share is None
    np.testing.assert_allclose(objective_rewards(ObjectivesSpec(tail=1.0, near_levels=2), reply, 4),
                               [NOVELTY[0], 2 / 3 * NOVELTY[1], 0.0, 0.0])


def test_the_tail_spec_is_the_demo_with_plain_sft_and_a_tail_aware_rl_recipe():
    """The tail sweep ran from the plain SFT model: the demo without its SASRec stage, distillation,
    trie-masked loss and bare prompts in batches of 64, evaluated by the plain beam (no popularity
    correction)."""
    plain = ["stages=[index,sft,rl,eval]", "sft.distill.path=null", "sasrec.config=null", "sft.loss=ce",
             "eval.rerank={path: null}", "sft.prompt=chat", "sft.batch_size=32", "sft.lr=2e-3",
             "sft.weight_average=0.999"]
    demo = load_spec(REPO / "configs/demo.yaml", plain).model_dump()
    tail = load_spec(REPO / "configs/office_tail.yaml").model_dump()
    assert tail["rl"]["objectives"]["head_exposure"] > 0 and tail["checkpoint"]["select"] == "last"
    differing = {key for key in demo if demo[key] != tail[key]}
    assert differing == {"name", "run_dir", "rl", "checkpoint"}
    assert {k for k in demo["rl"] if demo["rl"][k] != tail["rl"][k]} == {"objectives"}
    assert {k for k in demo["checkpoint"] if demo["checkpoint"][k] != tail["checkpoint"][k]} == {"select"}
