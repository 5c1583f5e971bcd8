"""Policy-gradient loss pieces (DESIGN.md section 5), pure torch on [B, T] token tensors.

All per-token tensors are aligned with `mask` (1 on completion tokens that count, 0 on prompt and
padding). Means are token-level over the whole batch (DAPO / Dr. GRPO style): a long completion
weighs by its tokens, not as one sequence.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, differentiable
    pg_loss: float
    kl: float
    clip_fraction: float
    ratio_mean: float
    tis_weight_mean: float


def masked_mean(values: torch.Tensor, mask: torch.Tensor, token_count: float | None = None) -> torch.Tensor:
    """Mean of values over the tokens where mask is 1 (0 if there are none).

    token_count overrides the denominator: a batch split into micro-batches passes the token count
    of the whole batch so the accumulated gradient equals the whole batch's token-level mean.
    """
    mask = mask.to(values.dtype)
    denom = mask.sum().clamp(min=1.0) if token_count is None else max(float(token_count), 1.0)
    return (values * mask).sum() / denom


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(tokens) under logits/temperature; logits [B, T, V] already aligned with tokens [B, T]."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of the next-token distribution at every position, [B, T]."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || ref) per token: exp(d) - d - 1 with d = ref - logp (>= 0, unbiased)."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1.0


def tis_weight(old_logp: torch.Tensor, rollout_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance weight min(pi_learner_old / pi_rollout, cap) per token, no gradient.

    The rollout engine's sampler and the learner's forward disagree slightly (kernels, precision),
    so the samples are off-policy for the learner; the capped ratio corrects that without the
    variance blow-up of an uncapped one.
    """
    return torch.exp(old_logp - rollout_logp).clamp(max=cap).detach()


def ce_anchor(logp: torch.Tensor, mask: torch.Tensor, token_count: float | None = None) -> torch.Tensor:
    """Cross-entropy of the anchor rows' tokens (their target SIDs), -log p at temperature 1, as a
    token-level mean: SFT's loss on those rows, which `rl.ce_coef` adds to the policy loss."""
    return masked_mean(-logp, mask, token_count)


def ppo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
             clip_low: float = 0.2, clip_high: float = 0.2, ref_logp: torch.Tensor | None = None,
             kl_coef: float = 0.0, rollout_logp: torch.Tensor | None = None, tis_cap: float | None = None,
             token_count: float | None = None) -> LossOutput:
    """Clipped surrogate + k3 KL, token-level mean over the batch.

    advantages may be per completion [B] (broadcast to tokens) or per token [B, T]. token_count: see
    masked_mean; it scales loss, pg_loss and kl alike, the ratio statistics stay per micro-batch.
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(logp)
    advantages = advantages.to(logp.dtype)
    ratio = torch.exp(logp - old_logp.detach())
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
    pg_tokens = -torch.minimum(unclipped, clipped)
    clip_active = (clipped < unclipped).to(logp.dtype)
    tis_mean = 1.0
    if tis_cap is not None:
        if rollout_logp is None:
            raise ValueError("tis_cap is set but no rollout logprobs were given")
        weight = tis_weight(old_logp, rollout_logp, tis_cap)
        pg_tokens = pg_tokens * weight
        tis_mean = masked_mean(weight, mask).item()
    pg = masked_mean(pg_tokens, mask, token_count)
    loss = pg
    kl_value = 0.0
    if ref_logp is not None:
        kl = masked_mean(kl_k3(logp, ref_logp.detach()), mask, token_count)
        loss = loss + kl_coef * kl
        kl_value = kl.item()
    return LossOutput(loss=loss, pg_loss=pg.item(), kl=kl_value, clip_fraction=masked_mean(clip_active, mask).item(),
                      ratio_mean=masked_mean(ratio.detach(), mask).item(), tis_weight_mean=tis_mean)
