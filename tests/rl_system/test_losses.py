import math

import pytest
import torch

from rl_system.losses import (
    kl_k3,
    masked_mean,
    ppo_loss,
    tis_weight,
    token_entropy,
    token_logprobs,
)


def test_masked_mean_ignores_padding_and_accepts_token_count():
    values = torch.tensor([[1.0, 3.0, 100.0], [5.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(values, mask).item() == pytest.approx(3.0)
    assert masked_mean(values, mask, token_count=9).item() == pytest.approx(1.0)
    assert masked_mean(values, torch.zeros_like(mask)).item() == 0.0


def test_on_policy_loss_is_minus_advantage_and_gradient_pushes_logprob_up():
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.1, 0.2]])).requires_grad_()
    adv = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[1, 1], [1, 0]])
    out = ppo_loss(logp, logp.detach(), adv, mask)
    # ratio 1 everywhere: per-token loss -A -> (-1 - 1 + 2) / 3 tokens
    assert out.loss.item() == pytest.approx(0.0)
    assert out.clip_fraction == 0.0 and out.ratio_mean == pytest.approx(1.0)
    out.loss.backward()
    # d loss / d logp = -A * ratio / N on counted tokens, 0 on padding
    torch.testing.assert_close(logp.grad, torch.tensor([[-1 / 3, -1 / 3], [2 / 3, 0.0]]))


def test_clipping_hand_values():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 1.5, 0.5, 0.5]])).requires_grad_()
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0]])
    out = ppo_loss(logp, old, adv, torch.ones(1, 4), clip_low=0.2, clip_high=0.2)
    # tokens: r=1.5,A=+1 -> clipped 1.2 -> -1.2 (clip active); r=1.5,A=-1 -> 1.5 (unclipped)
    #         r=0.5,A=-1 -> clipped 0.8 -> 0.8 (clip active); r=0.5,A=+1 -> -0.5 (unclipped)
    assert out.pg_loss == pytest.approx((-1.2 + 1.5 + 0.8 - 0.5) / 4)
    assert out.clip_fraction == pytest.approx(0.5)
    out.loss.backward()
    # clipped tokens carry no gradient; unclipped: -A * ratio / 4
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 1.5 / 4, 0.0, -0.5 / 4]]))


def test_asymmetric_clip_high():
    logp = torch.log(torch.tensor([[1.25]]))
    out = ppo_loss(logp, torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1), clip_low=0.2, clip_high=0.28)
    assert out.pg_loss == pytest.approx(-1.25) and out.clip_fraction == 0.0


def test_k3_kl_hand_value_and_zero_at_equal_policies():
    logp = torch.log(torch.tensor([0.5]))
    ref = torch.log(torch.tensor([0.25]))
    # d = log(0.5): exp(d) - d - 1 = 0.5 + ln 2 - 1
    assert kl_k3(logp, ref).item() == pytest.approx(0.5 + math.log(2) - 1)
    assert kl_k3(ref, ref).item() == 0.0


def test_loss_adds_kl_with_coefficient():
    logp = torch.log(torch.tensor([[0.5, 0.5]]))
    ref = torch.log(torch.tensor([[0.25, 0.5]]))
    out = ppo_loss(logp, logp, torch.tensor([0.0]), torch.ones(1, 2), ref_logp=ref, kl_coef=0.1)
    kl = (0.5 + math.log(2) - 1) / 2
    assert out.kl == pytest.approx(kl)
    assert out.loss.item() == pytest.approx(0.1 * kl)


def test_truncated_importance_sampling_weight():
    old = torch.log(torch.tensor([[0.6, 0.2]]))
    rollout = torch.log(torch.tensor([[0.2, 0.4]]))
    torch.testing.assert_close(tis_weight(old, rollout, cap=2.0), torch.tensor([[2.0, 0.5]]))
    out = ppo_loss(old, old, torch.tensor([1.0]), torch.ones(1, 2), rollout_logp=rollout, tis_cap=2.0)
    assert out.pg_loss == pytest.approx(-(2.0 + 0.5) / 2)
    assert out.tis_weight_mean == pytest.approx(1.25)
    with pytest.raises(ValueError, match="rollout logprobs"):
        ppo_loss(old, old, torch.tensor([1.0]), torch.ones(1, 2), tis_cap=2.0)


def test_token_logprobs_and_entropy():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [math.log(3), 0.0, -1e9, -1e9]]])
    tokens = torch.tensor([[2, 0]])
    torch.testing.assert_close(token_logprobs(logits, tokens), torch.log(torch.tensor([[0.25, 0.75]])))
    ent = token_entropy(logits)
    assert ent[0, 0].item() == pytest.approx(math.log(4))
    assert ent[0, 1].item() == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), abs=1e-6)
    # temperature 2 halves the logits: [ln 3 / 2, 0] -> p = sqrt(3) / (sqrt(3) + 1)
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    assert token_logprobs(logits, tokens, temperature=2.0)[0, 1].item() == pytest.approx(math.log(p), abs=1e-6)
