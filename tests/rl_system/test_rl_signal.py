"""Signal that SFT lacks (DESIGN.md section 11): the CE anchor, the injected target and the pairwise
advantage, each against hand-computed values, and the learner's micro-batch loss on a real model."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rl_system.advantages import compute, pairwise
from rl_system.groups import inject_target, train_batch
from rl_system.learner.batching import completion_logits, pack
from rl_system.learner.config import LearnerConfig
from rl_system.learner.rank import micro_batch_loss
from rl_system.losses import token_logprobs
from rl_system.messages import Completion, Prompt, RolloutGroup, ScoredGroup, TrainBatch

EOS = 2


def test_pairwise_contrasts_the_top_positive_with_the_hardest_negative_by_hand():
    rewards = np.array([[0.0, 1.0, 0.5, 0.0],    # top positive: column 1; hardest negative: highest logprob below 1.0
                        [1.0, 0.0, 1.0, 0.0],    # two positives: the one with the lower logprob (col 2) is pushed
                        [0.3, 0.3, 0.3, 0.3]])   # flat: nothing
    logprobs = np.array([[-1.0, -5.0, -0.5, -2.0],
                         [-1.0, -0.2, -3.0, -4.0],
                         [-1.0, -1.0, -1.0, -1.0]])
    assert pairwise(rewards, logprobs).tolist() == [[0.0, 1.0, -1.0, 0.0], [0.0, -1.0, 1.0, 0.0], [0.0] * 4]
    # NaN (an injected target) counts as the lowest logprob: it is the positive pushed, never the negative.
    nan = np.array([[np.nan, -1.0, -2.0]])
    assert pairwise(np.array([[1.0, 0.0, 0.0]]), nan).tolist() == [[1.0, -1.0, 0.0]]
    assert compute("pairwise", rewards, logprobs=logprobs).tolist() == pairwise(rewards, logprobs).tolist()
    with pytest.raises(ValueError, match="sequence log-probabilities"):
        compute("pairwise", rewards)


def _prompt(target_ids=(10, 20, 30)) -> Prompt:
    return Prompt(0, 0, "p", target=7, target_codes=(1, 2, 3), history=(4, 5), target_ids=target_ids)


def test_a_group_without_the_target_gets_it_in_place_of_its_last_completion():
    group = RolloutGroup([1, 2], [Completion([11, 20, 30, EOS], "a", [-1.0] * 4, "stop"),
                                  Completion([12, 20, 30, EOS], "b", [-2.0] * 4, "stop")], 0)
    assert inject_target(group, _prompt(), EOS, lambda ids: "target")
    last = group.completions[-1]
    assert last.token_ids == [10, 20, 30, EOS] and last.text == "target"
    assert all(math.isnan(v) for v in last.logprobs) and group.completions[0].token_ids == [11, 20, 30, EOS]
    assert not inject_target(group, _prompt(), EOS, lambda ids: "again")  # it holds the target now


def test_train_batch_adds_one_anchor_row_per_group_that_counts_apart():
    comps = [Completion([11, 20, 30, EOS], "a", [-1.0] * 4, "stop"), Completion([10, 20, 30, EOS], "b", [-2.0] * 4, "stop")]
    group = ScoredGroup(_prompt(), RolloutGroup([1, 2, 3], comps, 0), np.array([0.0, 1.0]), np.array([0, 1]),
                        np.array([0, 3]), np.array([1, 1]))
    plain = train_batch([group], "grpo", 2)
    anchored = train_batch([group], "grpo", 2, anchor_end=EOS)
    assert len(plain) == 2 and len(anchored) == 3
    assert anchored.anchor == [False, False, True] and anchored.completion_ids[2] == [10, 20, 30, EOS]
    assert anchored.advantages[2] == 0.0 and anchored.prompt_ids[2] == [1, 2, 3]
    assert (anchored.num_tokens(), anchored.num_anchor_tokens()) == (8, 4)
    assert anchored.select([2, 0]).anchor == [True, False]


@pytest.fixture(scope="module")
def tiny(tiny_policy):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_policy.model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_policy.model_dir)
    sid = tok.convert_tokens_to_ids(tiny_policy.index.tokens(tiny_policy.index.items()[3]))
    other = tok.convert_tokens_to_ids(tiny_policy.index.tokens(tiny_policy.index.items()[9]))
    prompt = tok("Recommend the next item:", add_special_tokens=False)["input_ids"]
    return model, tok, prompt, sid, other


def _grads(model) -> list[torch.Tensor]:
    out = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    return out


def test_ce_anchor_gradient_is_sfts_on_the_same_row_when_the_policy_term_is_off(tiny):
    from sft.batches import IGNORE_INDEX, collate, token_loss

    model, tok, prompt, sid, other = tiny
    target = [*sid, tok.eos_token_id]
    # A sampled row with a non-zero advantage and the anchor row; the policy-gradient weight at 0.
    n = len(target)
    batch = TrainBatch([prompt, prompt], [[*other, tok.eos_token_id], target], [1.5, 0.0],
                       [[-1.0] * n, [float("nan")] * n], anchor=[False, True])
    cfg = LearnerConfig(model_path="unused", kl_coef=0.001, ce_coef=1.0, pg_coef=0.0, temperature=0.7)
    packed = pack(batch, torch.device("cpu"), tok.pad_token_id)
    with torch.no_grad():
        old = token_logprobs(completion_logits(model, packed), packed.targets, cfg.temperature)
    step = micro_batch_loss(cfg, completion_logits(model, packed), packed, old, old - 0.1, batch.num_tokens(),
                            batch.num_anchor_tokens())
    step.loss.backward()
    ours = _grads(model)
    row = SimpleNamespace(input_ids=prompt + target, labels=[IGNORE_INDEX] * len(prompt) + target)
    token_loss(model, collate([row], tok.pad_token_id), torch.device("cpu")).backward()
    sfts = _grads(model)
    assert len(ours) == len(sfts)
    for a, b in zip(ours, sfts):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    assert step.ce == pytest.approx(float(step.loss), rel=1e-6)


def test_an_injected_row_takes_the_learners_own_logprobs(tiny):
    model, tok, prompt, sid, other = tiny
    target = [*sid, tok.eos_token_id]
    n = len(target)
    batch = TrainBatch([prompt, prompt], [[*other, tok.eos_token_id], target], [-1.0, 1.0],
                       [[-1.5] * n, [float("nan")] * n])
    cfg = LearnerConfig(model_path="unused", kl_coef=0.0, tis_cap=2.0)
    packed = pack(batch, torch.device("cpu"), tok.pad_token_id)
    with torch.no_grad():
        logits = completion_logits(model, packed)
    old = token_logprobs(logits, packed.targets)
    step = micro_batch_loss(cfg, logits, packed, old, None, batch.num_tokens(), 0.0)
    # The injected row's rollout logprobs are the learner's forward; its truncated-IS weight is 1.
    one_by_one = token_logprobs(completion_logits(model, pack(batch.select([1]), torch.device("cpu"), tok.pad_token_id)),
                                torch.tensor([target]))
    torch.testing.assert_close(step.rollout_logp[1], one_by_one[0], atol=1e-3, rtol=0)
    assert step.rollout_logp[0].tolist() == [-1.5] * n
    assert step.ce is None and math.isfinite(float(step.loss))
