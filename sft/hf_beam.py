"""Trie-constrained beam search over the SID positions with a Hugging Face causal LM, in torch: the
same ranking as the vLLM beam of `gream eval` (rl_system/beam_search.py), for the model being
trained, where no vLLM engine exists (SFT validation).

Scores are the sum over the SID tokens of log-probabilities normalised over the tokens the trie
allows at that position (vLLM's processed logprobs), so a beam ranks real items only. The prompts
run once; the key/value cache is then copied to `width` rows per prompt and reordered as beams are
kept, so each further SID position costs one token per beam. Every beam follows the trie, and
beams are distinct prefixes, so the results are distinct SIDs.
"""
from __future__ import annotations

from typing import Sequence

import torch

from cluster.device import autocast
from indexing.trie import SidTrie


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids, attention mask and position ids of left-padded prompts (positions count real tokens)."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long)
    return ids, mask, (mask.cumsum(1) - 1).clamp_min(0)


def _constrained_logprobs(logits: torch.Tensor, trie: SidTrie, states: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(trie.apply(logits.float(), states), dim=-1)


@torch.no_grad()
def constrained_beam(model, prompts: Sequence[Sequence[int]], trie: SidTrie, width: int, pad_id: int,
                     device: torch.device, amp_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The `width` best SIDs after each prompt (token ids), best first: (rows [P, width], the trie's
    build-order row of each SID (`SidTrie.from_index`: the index of the item in `index.items()`);
    scores [P, width], summed constrained log-probabilities). Where the trie holds fewer than
    `width` SIDs the rest are row -1 with score -inf."""
    if width < 1 or not prompts:
        raise ValueError(f"beam width must be >= 1 and prompts non-empty, got width={width}, {len(prompts)} prompts")
    trie = trie.to(device)
    n = len(prompts)
    ids, mask, positions = (t.to(device) for t in left_pad(prompts, pad_id))
    with autocast(device.type, amp_dtype):
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    root = trie.root(n)
    scores, tokens = trie.topk(_constrained_logprobs(out.logits[:, -1], trie, root), root, width)  # [P, W]
    states = trie.advance(root.repeat_interleave(width), tokens.reshape(-1))  # one row per beam, [P * W]
    cache = out.past_key_values
    cache.reorder_cache(torch.arange(n, device=device).repeat_interleave(width))
    # The beams of a prompt share its padding and positions, so these never need reordering.
    mask = mask.repeat_interleave(width, 0)
    position = positions[:, -1:].repeat_interleave(width, 0)
    last = tokens.reshape(-1, 1)
    for _ in range(trie.depth - 1):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        position = position + 1
        with autocast(device.type, amp_dtype):
            out = model(input_ids=last, attention_mask=mask, position_ids=position, past_key_values=cache,
                        use_cache=True)
        top, next_tokens = trie.topk(_constrained_logprobs(out.logits[:, -1], trie, states), states, width)
        candidates = (scores.reshape(-1, 1) + top).reshape(n, width * width)
        scores, pick = candidates.topk(width, dim=1)
        parents = (torch.arange(n, device=device)[:, None] * width + pick // width).reshape(-1)
        last = next_tokens.reshape(n, width * width).gather(1, pick).reshape(-1, 1)
        states = trie.advance(states[parents], last[:, 0])
        cache = out.past_key_values
        cache.reorder_cache(parents)
    rows = trie.sid_of_leaf(states).reshape(n, width)
    return torch.where(torch.isfinite(scores), rows, -1).cpu(), scores.cpu()
