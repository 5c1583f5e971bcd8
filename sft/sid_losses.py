"""SID-aware SFT objectives (`sft.loss`, `sft.prefix_loss`): the math, as functions of one batch's
logits and targets at the supervised positions, so each can be checked by hand on a toy trie.

Trie-masked cross-entropy (MSL): a SID token's softmax is normalised over the codes the trie allows
after that SID's earlier tokens, as the constrained beam normalises them (sft/hf_beam.py), so no
probability is spent on tokens decoding never offers. Targets that are not SID tokens (the end of
turn, titles, thoughts) keep the full softmax.

Prefix-aware loss (after APAO, arXiv 2603.02730): a beam drops the target when a prefix of it scores
below other prefixes of that length, however well its later tokens would score, so a loss on the
prefix scores (each a sum of constrained log-probabilities, the beam's score) is added to the token
loss. From one teacher-forced forward only the prefixes that leave the target's path at their last
token can be scored, so its negatives are those: for the target's level-l prefix, `negatives`
sibling codes drawn from the trie's children of the target's level-(l-1) prefix, each scored as the
target's parent prefix plus the sibling's log-probability.
- pointwise: -log P(target prefix) - mean log(1 - P(negative prefix)), with P = exp(prefix score);
- pairwise: mean log(1 + exp(negative score - target score)), the logistic loss of each pair.
A level where the target's parent has no other child is forced in the beam and left out. The levels
of one target are weighted softmax(level loss / temperature), held constant in the gradient: the
closed-form worst case over level weights with a KL penalty towards uniform, so the prefix most at
risk of pruning gets the most weight (temperature -> 0: only it).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F

from cluster.spec import SftSpec
from indexing.trie import SidTrie
from sft.batches import Objective
from sft.tasks import IGNORE_INDEX


@dataclass(frozen=True)
class PrefixLoss:
    kind: Literal["pointwise", "pairwise"]
    weight: float  # APAO's beta: the prefix loss's weight beside the token loss
    negatives: int
    temperature: float


def sft_objective(sft: SftSpec, trie: SidTrie) -> Objective | None:
    """The batch loss `sft.loss` and `sft.prefix_loss` ask for; None for plain cross-entropy."""
    p = sft.prefix_loss
    if sft.loss == "ce" and p.kind == "none":
        return None
    prefix = None if p.kind == "none" else PrefixLoss(p.kind, p.weight, p.negatives, p.temperature)
    return partial(sid_token_loss, trie, token_levels(trie), masked=sft.loss == "trie_ce", prefix=prefix)


def token_levels(trie: SidTrie) -> torch.Tensor:
    """Long [V]: each SID token's level (0-based position in its SIDs), -1 for every other token."""
    bounds = torch.tensor(trie.level_start, device=trie.device)
    level = torch.searchsorted(bounds, trie.edge_child, right=True) - 2  # a child at depth d holds a level d-1 token
    tokens = trie.edge_keys % trie.vocab_size
    out = torch.full((trie.vocab_size,), -1, dtype=torch.long, device=trie.device)
    out[tokens] = level
    if not torch.equal(out[tokens], level):
        raise ValueError("a token occurs at two SID levels; the level of a target could not be told from its id")
    return out


def sid_levels(levels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[B, P]: the SID level of each target, -1 where it is unsupervised or not a SID token."""
    return torch.where(targets != IGNORE_INDEX, levels[targets.clamp(min=0)], -1)


def prefix_states(trie: SidTrie, level: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[N]: the trie node of each SID target's prefix, in the row-major order of `level >= 0`. A SID's
    tokens are consecutive supervised positions, so a level-l target's prefix is the l targets before it."""
    b, p = (level >= 0).nonzero(as_tuple=True)
    lengths = level[b, p]
    window = (p - lengths)[:, None] + torch.arange(trie.depth - 1, device=p.device)
    return trie.states_for_prefixes(targets[b[:, None], window.clamp(0, targets.shape[1] - 1)], lengths)


def constrained_logprobs(trie: SidTrie, logits: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """[N, V]: log-softmax over the tokens the trie allows after each state, -inf elsewhere."""
    return torch.log_softmax(trie.apply(logits.float(), states), dim=-1)


def sid_token_loss(trie: SidTrie, levels: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                   masked: bool, prefix: PrefixLoss | None = None) -> torch.Tensor:
    """Mean negative log-likelihood of the supervised targets (`logits` [B, P, V], `targets` [B, P],
    IGNORE_INDEX where unsupervised), SID tokens trie-masked when `masked`, plus the prefix loss."""
    supervised = targets != IGNORE_INDEX
    safe = targets.clamp(min=0)
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, safe[..., None])[..., 0]
    level = sid_levels(levels, targets)
    sid = level >= 0
    rows = constrained_logprobs(trie, logits[sid], prefix_states(trie, level, safe))
    sid_logp = rows.gather(1, safe[sid][:, None])[:, 0]
    if not torch.isfinite(sid_logp).all():
        raise ValueError("a SID target is not a child of its prefix in the trie: the batch's SIDs are not the index's")
    if masked:
        logp = logp.masked_scatter(sid, sid_logp)
    loss = -logp[supervised].mean()
    if prefix is None:
        return loss
    items = sid_items(level, trie.depth)
    return loss + prefix.weight * prefix_loss(rows, sid_logp, safe[sid], items, prefix)


def sid_items(level: torch.Tensor, depth: int) -> torch.Tensor:
    """[M, depth]: for each complete SID among the targets, the indices of its levels' targets in
    the row-major order of `level >= 0`."""
    order = (level >= 0).flatten().cumsum(0) - 1
    flat = level.flatten()
    ends = ((flat == depth - 1) & (torch.arange(flat.numel(), device=flat.device) % level.shape[1] >= depth - 1))
    pos = ends.nonzero()[:, 0, None] - (depth - 1) + torch.arange(depth, device=flat.device)
    whole = (flat[pos] == torch.arange(depth, device=flat.device)).all(1)
    return order[pos[whole]]


def prefix_loss(rows: torch.Tensor, logp: torch.Tensor, tokens: torch.Tensor, items: torch.Tensor,
                prefix: PrefixLoss) -> torch.Tensor:
    """Mean over SIDs of the worst-prefix-weighted level losses. `rows` [N, V]: constrained log-probs
    of N SID targets, `logp` [N] the targets' own, `tokens` [N] their ids, `items` [M, L] (sid_items)."""
    if items.numel() == 0:
        return rows.new_zeros(())
    pos = logp[items].cumsum(1)  # [M, L]: the target's prefix scores
    cand = rows[items]  # [M, L, V]
    vocab = torch.arange(cand.shape[-1], device=cand.device)
    allowed = torch.isfinite(cand) & (vocab != tokens[items][..., None])
    # Distinct siblings at random: the top `negatives` of uniform draws over the allowed tokens.
    draw = torch.rand(cand.shape, device=cand.device).masked_fill(~allowed, -1.0)
    picked, idx = draw.topk(min(prefix.negatives, cand.shape[-1]), dim=-1)
    real = picked >= 0  # [M, L, K]
    neg = (pos - logp[items])[..., None] + cand.gather(-1, idx).masked_fill(~real, 0.0)
    if prefix.kind == "pairwise":
        per = F.softplus(neg - pos[..., None])
        level_loss = (per * real).sum(-1) / real.sum(-1).clamp(min=1)
    else:
        per = -torch.log(-torch.expm1(neg.clamp(max=-1e-6)))
        level_loss = -pos + (per * real).sum(-1) / real.sum(-1).clamp(min=1)
    has = real.any(-1)  # [M, L]: levels the beam can prune at
    weights = torch.softmax((level_loss.detach() / prefix.temperature).masked_fill(~has, float("-inf")), dim=-1)
    counted = has.any(-1)
    if not counted.any():
        return rows.new_zeros(())
    return (weights[counted] * level_loss[counted].masked_fill(~has[counted], 0.0)).sum(-1).mean()
