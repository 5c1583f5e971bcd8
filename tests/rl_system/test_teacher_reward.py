"""The teacher reward: a trained SASRec loaded by each reward replica, its reward forms by hand, the
catalogue check, and a real ZMQ replica answering with the teacher's scores."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cluster.errors import BadRequest, MissingArtefact
from rl_system.reward.client import RewardClient, RewardServiceError
from rl_system.reward.functions import teacher_gate, teacher_reward
from rl_system.reward.server import RewardServer
from rl_system.reward.teacher import Teacher, check_teacher, load_scorer
from sft.sasrec import SASRec, SasrecConfig
from sft.sasrec_scorer import save_scorer
from tests.reward_fixtures import TOKEN, index_path  # noqa: F401

ITEMS = 4  # the toy index's catalogue (tests/reward_fixtures.py)


def test_reward_forms_by_hand():
    logp = np.array([[math.log(0.5), math.log(0.25), -np.inf], [-np.inf, -np.inf, -np.inf]])
    rank = np.array([[0, 2, -1], [-1, -1, -1]])
    np.testing.assert_allclose(teacher_reward("rank", logp, rank), [[1.0, 0.5, 0.0], [0.0, 0.0, 0.0]])
    # logprob: a completion naming no item gets its group's lowest; a group naming none gets 0.
    np.testing.assert_allclose(teacher_reward("logprob", logp, rank),
                               [[math.log(0.5), math.log(0.25), math.log(0.25)], [0.0, 0.0, 0.0]])
    # group_softmax: 0.5 and 0.25 renormalised over the group's two items.
    np.testing.assert_allclose(teacher_reward("group_softmax", logp, rank), [[2 / 3, 1 / 3, 0.0], [0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="unknown teacher reward form"):
        teacher_reward("kl", logp, rank)


@pytest.fixture(scope="module")
def scorer_dir(tmp_path_factory):
    """A SASRec over the toy catalogue with random weights, saved as `gream baseline sasrec` saves it."""
    torch.manual_seed(0)
    model = SASRec(ITEMS, 3, SasrecConfig(hidden=8, blocks=1, heads=1, dropout=0.0)).eval()
    with torch.no_grad():
        model.item.weight.normal_(0, 1.0)  # clear preferences, no near-ties
    folder = tmp_path_factory.mktemp("sasrec")
    save_scorer(folder, model, SasrecConfig(hidden=8, blocks=1, heads=1, dropout=0.0), "Toy", ITEMS)
    return folder, model


def test_teacher_scores_are_the_models_softmax_over_the_catalogue(scorer_dir):
    folder, model = scorer_dir
    teacher = Teacher(folder, ITEMS, "Toy")
    histories = [[2, 0], [2, 0], [1, 3, 0, 2], [3]]  # the third is cut to the model's last 3 items
    items = np.array([1, 3, 0, -1])
    logp, rank = teacher.score(histories, items)
    targets = np.array([2, -1, 3, 1])
    _, _, target_logp = teacher.score_with_targets(histories, items, targets)
    pad = ITEMS
    for row, (history, item) in enumerate(zip(histories, items)):
        kept = history[-3:]
        seq = torch.tensor([[pad] * (3 - len(kept)) + kept])
        with torch.no_grad():
            scores = model.scores(seq)[0]
        want = -np.inf if targets[row] < 0 else float(torch.log_softmax(scores, 0)[targets[row]])
        assert target_logp[row] == pytest.approx(want, abs=1e-5)
        if item < 0:
            assert logp[row] == -np.inf and rank[row] == -1
            continue
        assert logp[row] == pytest.approx(float(torch.log_softmax(scores, 0)[item]), abs=1e-5)
        assert rank[row] == int((scores > scores[item]).sum())
    loaded, meta = load_scorer(folder)
    assert meta["num_items"] == ITEMS and not loaded.training


def test_a_missing_or_foreign_scorer_is_refused_naming_the_file(scorer_dir, tmp_path):
    folder, _ = scorer_dir
    with pytest.raises(BadRequest, match=r"rl.teacher.path: .*scorer.json does not exist"):
        check_teacher(tmp_path, ITEMS, "Toy")
    with pytest.raises(BadRequest, match=r"scorer.json was trained on Toy with 4 items; this run's catalogue is Office"):
        check_teacher(folder, 2000, "Office")
    with pytest.raises(MissingArtefact, match="gream baseline sasrec"):
        load_scorer(tmp_path)
    (tmp_path / "scorer.json").write_text("{not json")
    with pytest.raises(BadRequest, match="not a readable scorer description"):
        check_teacher(tmp_path, ITEMS, "Toy")


def test_a_replica_with_a_teacher_says_so_and_scores_with_it(scorer_dir, index_path):  # noqa: F811
    folder, _ = scorer_dir
    server = RewardServer(str(index_path), token=TOKEN, teacher=(str(folder), "Toy"))
    try:
        completions = ["<a_1><b_2><c_0>", "<a_4><b_2><c_0>", "nonsense"]
        histories = [[2, 1], [2, 1], [3]]
        with RewardClient([server.endpoint()], token=TOKEN, timeout_s=10) as client:
            reply = client.score(completions, [0, 0, 0], histories=histories)
            with pytest.raises(RewardServiceError, match="'histories'"):
                client.score(completions, [0, 0, 0])
            sock = client._socks[0]
            from rl_system.reward import wire
            sock.send_multipart(wire.pack_request(99, TOKEN, {"ping": True}))
            import msgpack
            pong = msgpack.unpackb(sock.recv_multipart()[-1], raw=False)
        assert pong["teacher"] == str(folder)
        logp, rank, target_logp = Teacher(folder, ITEMS, "Toy").score_with_targets(
            histories, np.array([0, 3, -1]), np.array([0, 0, 0]))
        np.testing.assert_allclose(reply.teacher_logp, logp)
        # the target's log p from the same forward: item 0 under each history (the first row names it)
        np.testing.assert_allclose(reply.teacher_target_logp, target_logp)
        assert target_logp[0] == pytest.approx(logp[0])
        assert reply.teacher_rank.tolist() == rank.tolist() and reply.item.tolist() == [0, 3, -1]
    finally:
        server.stop()


def test_the_gate_by_hand():
    """Three groups of G=4 (items -1: no item). Group 0: the target (item 5, a hit) and negatives 1, 2,
    the teacher's target log p above both; group 1: negative 7 above the target; group 2: no negative."""
    items = np.array([[5, 1, 2, 1], [7, 7, 7, 3], [5, 5, -1, -1]])
    exact = items == 5
    logp = np.array([[-1.0, -2.0, -3.0, -2.0], [-0.5, -0.5, -0.5, -4.0], [-1.0, -1.0, -np.inf, -np.inf]])
    target = np.array([-1.0, -1.5, -1.0])
    # separates: group 0 (-1 > -2), not group 1 (-1.5 < -0.5), group 2 (no negative to beat)
    assert teacher_gate("separates", target, logp, items, exact, 0.5).tolist() == [True, False, True]
    # uncertain at 0.5: the most frequent item holds 2/4, 3/4, 2/4 of the group; at 0.25 none passes
    assert teacher_gate("uncertain", target, logp, items, exact, 0.5).tolist() == [True, False, True]
    assert teacher_gate("uncertain", target, logp, items, exact, 0.25).tolist() == [False, False, False]
    assert teacher_gate("both", target, logp, items, exact, 0.5).tolist() == [True, False, True]
    assert teacher_gate("none", target, logp, items, exact, 0.25).tolist() == [True, True, True]
    with pytest.raises(ValueError, match="unknown teacher gate"):
        teacher_gate("sometimes", target, logp, items, exact, 0.5)
