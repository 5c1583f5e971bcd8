"""The SID objectives (sft/sid_losses.py) against values worked out by hand on a 3-level toy trie.

Vocabulary of 10: 0 ends a turn, 1-2 are first-level codes, 3-5 second-level, 6-8 third-level, 9 a
word. The SIDs (1,3,6) (1,3,7) (1,4,8) (2,5,6) give the trie
    root -> {1, 2};  1 -> {3, 4};  2 -> {5};  (1,3) -> {6, 7};  (1,4) -> {8};  (2,5) -> {6}.
Logits are logs of chosen weights, so every constrained probability is a small fraction.
"""
from __future__ import annotations

import math

import pytest
import torch

from indexing.trie import SidTrie
from sft.sid_losses import (
    HeadView,
    PrefixLoss,
    TeacherTargets,
    distill_tables,
    sid_items,
    sid_levels,
    sid_marginals,
    sid_token_loss,
    token_levels,
)
from sft.tasks import IGNORE_INDEX

LN = math.log


@pytest.fixture(scope="module")
def trie() -> SidTrie:
    return SidTrie.build([[1, 3, 6], [1, 3, 7], [1, 4, 8], [2, 5, 6]], vocab_size=10, end_token_ids=[0])


def weights_row(**w: float) -> list[float]:
    """Logits of a position: log of the weight given per token (t0..t9), weight 1 for the rest."""
    return [LN(w.get(f"t{i}", 1.0)) for i in range(10)]


# The SID (1,3,6) then the end of turn. Constrained: level 1 over {1,2} weights 3:1 -> p(1) = 3/4;
# level 2 over {3,4} weights 1:3 -> p(3) = 1/4; level 3 over {6,7} weights 1:1 -> p(6) = 1/2.
ROWS = [weights_row(t1=3, t9=4), weights_row(t4=3, t9=2), weights_row(), weights_row(t0=5)]
TARGETS = [1, 3, 6, 0]


def batch(rows=ROWS, targets=TARGETS):
    return HeadView(torch.tensor([rows])), torch.tensor([targets])


def test_levels_are_read_from_the_trie(trie):
    assert token_levels(trie).tolist() == [-1, 0, 0, 1, 1, 1, 2, 2, 2, -1]
    targets = torch.tensor([[IGNORE_INDEX, 1, 3, 6, 2, 5, 6, 0, 9]])
    assert sid_levels(token_levels(trie), targets).tolist() == [[-1, 0, 1, 2, 0, 1, 2, -1, -1]]


def test_plain_and_trie_masked_cross_entropy(trie):
    logits, targets = batch()
    levels = token_levels(trie)
    # Full softmax: position 1 sums weights 3 + 4 + 8 ones = 15; position 2: 3 + 2 + 8 = 13;
    # position 3: 10 ones; position 4 (the end of turn, never masked): 5 + 9 = 14.
    full = (LN(15 / 3) + LN(13 / 1) + LN(10) + LN(14 / 5)) / 4
    assert float(sid_token_loss(trie, levels, logits, targets, masked=False)) == pytest.approx(full)
    masked = (LN(4 / 3) + LN(4) + LN(2) + LN(14 / 5)) / 4
    assert float(sid_token_loss(trie, levels, logits, targets, masked=True)) == pytest.approx(masked)


def test_each_sid_of_a_history_starts_again_at_the_root(trie):
    # (1,4,8) then (2,5,6), back to back as history SIDs are, with one unsupervised position between
    # batch rows padded left. Forced steps (1,4)->8, 2->5 and (2,5)->6 cost nothing when masked;
    # position 0: {1,2} with weights 1:1; position 1: {3,4} with 1:2 -> p(4) = 2/3; position 3: {1,2}
    # with 1:4 -> p(2) = 4/5.
    rows = [weights_row(), weights_row(t4=2), weights_row(t8=0.5), weights_row(t2=4), weights_row(), weights_row()]
    targets = [[1, 4, 8, 2, 5, 6], [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 1, 3, 7]]
    second = [weights_row(), weights_row(), weights_row(), weights_row(t1=9), weights_row(t3=3), weights_row(t7=7)]
    view = HeadView(torch.tensor([rows, second]))
    got = sid_token_loss(trie, token_levels(trie), view, torch.tensor(targets), masked=True)
    # Second row: (1,3,7) with p(1) = 9/10, p(3) = 3/4, p(7) = 7/8.
    expected = (LN(2) + LN(3 / 2) + 0 + LN(5 / 4) + 0 + 0 + LN(10 / 9) + LN(4 / 3) + LN(8 / 7)) / 9
    assert float(got) == pytest.approx(expected)
    items = sid_items(sid_levels(token_levels(trie), torch.tensor(targets)), 3)
    assert items.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_a_code_off_the_trie_keeps_the_full_softmax(trie):
    # 2 has no child 3, and (2, 3) is no prefix for 6: both are scored over the whole vocabulary
    # (position 2: 13 in all, position 3: 10), as codes a thought mentions would be; 2 itself is masked.
    logits, _ = batch()
    levels = token_levels(trie)
    got = sid_token_loss(trie, levels, logits, torch.tensor([[2, 3, IGNORE_INDEX, 0]]), masked=True)
    assert float(got) == pytest.approx((LN(4) + LN(13) + LN(14 / 5)) / 3)
    got = sid_token_loss(trie, levels, logits, torch.tensor([[2, 3, 6, 0]]), masked=True, prefix=prefix("pairwise"))
    # No complete SID is left for the prefix loss.
    assert float(got) == pytest.approx((LN(4) + LN(13) + LN(10) + LN(14 / 5)) / 4)


def prefix(kind: str, **kw) -> PrefixLoss:
    return PrefixLoss(**{"kind": kind, "weight": 1.0, "negatives": 4, "temperature": 1.0, **kw})


def prefix_part(trie, loss: PrefixLoss, rows=ROWS, targets=TARGETS) -> float:
    logits, t = batch(rows, targets)
    levels = token_levels(trie)
    return float(sid_token_loss(trie, levels, logits, t, True, loss) - sid_token_loss(trie, levels, logits, t, True))


def test_pairwise_prefix_loss_by_hand(trie):
    # Prefix scores of (1,3,6): ln 3/4, ln 3/16, ln 3/32. The one sibling at each level: 2 (ln 1/4);
    # (1,4): ln 3/4 + ln 3/4; (1,3,7): ln 3/16 + ln 1/2. Pair losses ln(1 + e^(neg - pos)):
    levels = [LN(1 + 1 / 3), LN(1 + 3), LN(1 + 1)]  # ln 4/3, ln 4, ln 2
    weights = [4 / 3, 4, 2]  # exp(level loss), temperature 1
    expected = sum(w * v for w, v in zip(weights, levels)) / sum(weights)
    assert prefix_part(trie, prefix("pairwise")) == pytest.approx(expected)
    # The worst prefix alone as the temperature goes to 0; the plain mean as it grows.
    assert prefix_part(trie, prefix("pairwise", temperature=1e-4)) == pytest.approx(LN(4))
    assert prefix_part(trie, prefix("pairwise", temperature=1e6)) == pytest.approx(sum(levels) / 3)
    assert prefix_part(trie, prefix("pairwise", weight=0.1)) == pytest.approx(0.1 * expected)


def test_pointwise_prefix_loss_by_hand(trie):
    # -ln P(target prefix) - ln(1 - P(sibling prefix)), with P(2) = 1/4, P(1,4) = 9/16, P(1,3,7) = 3/32.
    levels = [LN(4 / 3) + LN(4 / 3), LN(16 / 3) + LN(16 / 7), LN(32 / 3) + LN(32 / 29)]
    weights = [16 / 9, 256 / 21, 1024 / 87]
    expected = sum(w * v for w, v in zip(weights, levels)) / sum(weights)
    assert prefix_part(trie, prefix("pointwise")) == pytest.approx(expected)


def test_forced_levels_are_left_out(trie):
    # (2,5,6): only its first level has a sibling (1, weight 3 against the target's 1): pair loss
    # ln(1 + 3), whatever the temperature.
    targets = [2, 5, 6, 0]
    assert prefix_part(trie, prefix("pairwise"), targets=targets) == pytest.approx(LN(4))
    assert prefix_part(trie, prefix("pairwise", temperature=1e-4), targets=targets) == pytest.approx(LN(4))


def test_negatives_are_drawn_among_the_siblings_only():
    # Root with three children; one negative per prefix: each draw is one of the two siblings.
    trie = SidTrie.build([[1, 3, 6], [2, 3, 6], [4, 3, 6]], vocab_size=10, end_token_ids=[0])
    rows = [weights_row(t1=2, t2=1, t4=5, t9=50), weights_row(), weights_row()]
    # Target 1 at 2/8: against 2 (1/8) ln(1 + 1/2), against 4 (5/8) ln(1 + 5/2); levels 2-3 are forced.
    seen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        got = prefix_part(trie, prefix("pairwise", negatives=1), rows, [1, 3, 6])
        seen.add(min((LN(3 / 2), LN(7 / 2)), key=lambda v: abs(v - got)))
        assert min(abs(got - LN(3 / 2)), abs(got - LN(7 / 2))) < 1e-6
    assert seen == {LN(3 / 2), LN(7 / 2)}
    both = prefix_part(trie, prefix("pairwise", negatives=2), rows, [1, 3, 6])
    assert both == pytest.approx((LN(3 / 2) + LN(7 / 2)) / 2)


# A teacher over the four SIDs, in the order the trie was built from: p_T = 0.4, 0.2, 0.3, 0.1.
SIDS = torch.tensor([[1, 3, 6], [1, 3, 7], [1, 4, 8], [2, 5, 6]])
P_TEACHER = torch.tensor([[0.4, 0.2, 0.3, 0.1]])
ROW = torch.tensor([0])  # the targets' row of P_TEACHER


def test_the_teacher_is_marginalised_onto_the_trie_below_the_targets_prefix(trie):
    tables = distill_tables(trie, SIDS, 0.5)
    # (1,3,6): level 1 over codes {1,2}: 0.4+0.2+0.3 against 0.1; level 2 below 1 over {3,4,5}: 0.6 : 0.3
    # renormalised; level 3 below (1,3) over {6,7,8}: 0.4 : 0.2.
    prefix_nodes = trie.states_for_prefixes(torch.tensor([[1, 3], [1, 3], [1, 3]]), torch.tensor([0, 1, 2]))
    expected = [[0.9, 0.1], [2 / 3, 1 / 3, 0.0], [2 / 3, 1 / 3, 0.0]]
    for depth, want in enumerate(expected):
        q = sid_marginals(P_TEACHER.log(), ROW, prefix_nodes[depth:depth + 1], tables, depth, len(want))
        assert q[0].tolist() == pytest.approx(want)
    # Tempered at T = 1/2: p_T^2 = 0.16, 0.04, 0.09, 0.01; below the root 0.29 : 0.01.
    q = sid_marginals(P_TEACHER.log() / 0.5, ROW, prefix_nodes[:1], tables, 0, 2)
    assert q[0].tolist() == pytest.approx([29 / 30, 1 / 30])
    # Below 2 only (2,5,6) lies: the forced code takes all the mass, however unlikely the item.
    q = sid_marginals(P_TEACHER.log(), ROW, trie.states_for_prefixes(torch.tensor([[2]])), tables, 1, 3)
    assert q[0].tolist() == [0.0, 0.0, 1.0]


def test_the_sids_below_each_prefix_are_one_run_of_the_tables_rows(trie):
    tables = distill_tables(trie, SIDS, 0.5)
    root, one, two, one_three = trie.states_for_prefixes(torch.tensor([[1, 3], [1, 3], [2, 5], [1, 3]]),
                                                         torch.tensor([0, 1, 1, 2])).tolist()
    assert [(int(tables.start[n]), int(tables.count[n])) for n in (root, one, two, one_three)] == [
        (0, 4), (0, 3), (3, 1), (0, 2)]
    assert tables.spans == (4, 3, 2)  # below the root, below 1, below (1,3)
    with pytest.raises(ValueError, match="lexicographic"):
        distill_tables(trie, SIDS.flip(0), 0.5)


def distilled(trie, masked: bool, alpha: float) -> float:
    logits, targets = batch()
    teacher = TeacherTargets(torch.tensor([[0, 0, 0, -1]]), P_TEACHER.log())
    return float(sid_token_loss(trie, token_levels(trie), logits, targets, masked,
                                distill=distill_tables(trie, SIDS, alpha), teacher=teacher))


def test_distilled_loss_by_hand(trie):
    # (1,3,6) then the end of turn, which keeps its one-hot target. Per level: CE(one-hot), CE(q).
    # trie_ce: model 3/4 : 1/4, then 1/4 : 3/4, then 1/2 : 1/2 (see ROWS).
    one_hot = [LN(4 / 3), LN(4), LN(2)]
    soft = [0.9 * LN(4 / 3) + 0.1 * LN(4), 2 / 3 * LN(4) + 1 / 3 * LN(4 / 3), LN(2)]
    end = LN(14 / 5)
    mixed = sum(0.5 * a + 0.5 * b for a, b in zip(one_hot, soft))
    assert distilled(trie, True, 0.5) == pytest.approx((mixed + end) / 4)
    assert distilled(trie, True, 1.0) == pytest.approx((sum(soft) + end) / 4)
    # ce: the full softmax: 3/15 and 1/15 for codes 1, 2; 1/13 and 3/13 for 3, 4; 1/10 each for 6, 7.
    one_hot = [LN(5), LN(13), LN(10)]
    soft = [0.9 * LN(5) + 0.1 * LN(15), 2 / 3 * LN(13) + 1 / 3 * LN(13 / 3), LN(10)]
    mixed = sum(0.5 * a + 0.5 * b for a, b in zip(one_hot, soft))
    assert distilled(trie, False, 0.5) == pytest.approx((mixed + end) / 4)
    # alpha = 0 is the objective without a teacher.
    logits, targets = batch()
    for masked in (True, False):
        assert distilled(trie, masked, 0.0) == pytest.approx(float(sid_token_loss(trie, token_levels(trie), logits, targets,
                                                                                  masked)), rel=1e-6)


@pytest.mark.parametrize("setting, key", [("sft.loss=msl", "sft.loss"), ("sft.prefix_loss.kind=listwise", "sft.prefix_loss.kind"),
                                          ("sft.prefix_loss.negatives=0", "sft.prefix_loss.negatives"),
                                          ("sft.prefix_loss.temperature=0", "sft.prefix_loss.temperature"),
                                          ("sft.distill.alpha=1.5", "sft.distill.alpha"),
                                          ("sft.distill.temperature=0", "sft.distill.temperature"),
                                          ("sft.distill.weight=1", "sft.distill.weight")])
def test_a_bad_objective_setting_exits_2_naming_its_key(setting, key, capsys):
    from gream.cli import main

    assert main(["config", "show", "configs/demo.yaml", "--set", setting]) == 2
    assert f"key '{key}'" in capsys.readouterr().err


def test_logit_adjustment_trains_on_logits_plus_the_log_prior(trie):
    from cluster.spec import SftSpec
    from sft.logit_adjust import log_mass
    from sft.sid_losses import sft_objective

    # Training interactions 3, 0, 1, 5 of (1,3,6) (1,3,7) (1,4,8) (2,5,6): add-one masses 4, 1, 2, 6,
    # so node 1 holds 7, node 2 6, (1,3) 5, (1,4) 2, the root 13.
    sids = torch.tensor([[1, 3, 6], [1, 3, 7], [1, 4, 8], [2, 5, 6]])
    mass = log_mass(trie, sids, torch.tensor([3, 0, 1, 5])).exp()
    at = {p: float(mass[trie.states_for_prefixes(torch.tensor([list(p) + [0] * (3 - len(p))]),
                                                   torch.tensor([len(p)]))[0]]) for p in
          [(), (1,), (2,), (1, 3), (1, 4), (1, 3, 6), (1, 3, 7)]}
    assert at == pytest.approx({(): 13, (1,): 7, (2,): 6, (1, 3): 5, (1, 4): 2, (1, 3, 6): 4, (1, 3, 7): 1})
    # tau 1: the constrained weights of (1,3,6) become 3x7 : 1x6 -> p(1) = 7/9; 1x5 : 3x2 -> p(3) = 5/11;
    # 1x4 : 1x1 -> p(6) = 4/5; the end of turn keeps its full softmax.
    logits, targets = batch()
    objective = sft_objective(SftSpec(loss="trie_ce", logit_adjust=1.0), trie, None, log_mass(
        trie, sids, torch.tensor([3, 0, 1, 5])))
    expected = (LN(9 / 7) + LN(11 / 5) + LN(5 / 4) + LN(14 / 5)) / 4
    assert float(objective(logits, targets)) == pytest.approx(expected)
    with pytest.raises(ValueError, match="logit_adjust 0.5 adjusts the trie-masked SID softmax; set loss: trie_ce"):
        SftSpec(logit_adjust=0.5)


def test_item_targets_take_a_softmax_over_the_items_by_hand():
    # Tokens 10-12 are item tokens (sft.history_input: item) beside the toy trie's SID tokens.
    trie13 = SidTrie.build([[1, 3, 6], [1, 3, 7], [1, 4, 8], [2, 5, 6]], vocab_size=13, end_token_ids=[0])
    items = slice(10, 13)
    row = lambda **w: [LN(w.get(f"t{i}", 1.0)) for i in range(13)]  # noqa: E731
    # Item 11 over items weighing 1:2:1 -> p = 1/2; item 12 over 1:1:3 -> p = 3/5. The word (9)
    # and the other SID tokens, however heavy, are no item and take no share.
    view = HeadView(torch.tensor([[row(t11=2, t9=50), row(t12=3, t1=7)]]))
    targets = torch.tensor([[11, 12]])
    plain = sid_token_loss(trie13, token_levels(trie13), view, targets, masked=True, items=items)
    assert float(plain) == pytest.approx((LN(2) + LN(5 / 3)) / 2)
    # The second distilled (teacher row 0: items weighing 1:1:2, q = 1/4, 1/4, 1/2), alpha 0.5; the
    # first keeps its one-hot target (row -1).
    teacher = TeacherTargets(torch.tensor([[-1, 0]]), torch.zeros(1, 4), torch.tensor([[LN(1), LN(1), LN(2)]]))
    soft = 0.25 * LN(5) + 0.25 * LN(5) + 0.5 * LN(5 / 3)
    got = sid_token_loss(trie13, token_levels(trie13), view, targets, masked=True, items=items,
                         distill=distill_tables(trie13, SIDS, 0.5), teacher=teacher)
    assert float(got) == pytest.approx((LN(2) + 0.5 * LN(5 / 3) + 0.5 * soft) / 2)


def test_item_history_input_needs_the_trie_masked_loss(capsys):
    from gream.cli import main

    assert main(["config", "show", "configs/demo.yaml", "--set", "sft.history_input=item", "--set", "sft.loss=ce"]) == 2
    err = capsys.readouterr().err
    assert "history_input" in err and "trie_ce" in err
