"""Popularity logit adjustment of the SID token loss (`sft.logit_adjust`, after Menon et al., "Long-tail
learning via logit adjustment", ICLR 2021): the model trains on its logits plus tau log prior, where
a SID token's prior is its code's share of the training interactions under the token's prefix, and
decodes without the addition. What popularity alone explains goes to the prior instead of the
weights, so the model's own scores favour the items bought often less than plain cross-entropy does.

The prior of a code c after prefix p is m(p + c) / m(p), with m(node) the add-one interactions of
the items whose SIDs pass through it (an item never bought counts 1). The priors of a SID's levels
multiply to its item's add-one share of the interactions, so the additions sum to tau log(1 + its
interactions), up to one constant: the item-level prior the popularity re-ranking
(rl_system/rerank.py) subtracts after decoding.
"""
from __future__ import annotations

import torch

from indexing.trie import SidTrie


def log_mass(trie: SidTrie, sids: torch.Tensor, interactions: torch.Tensor) -> torch.Tensor:
    """Float [num_nodes]: log of the add-one interactions below each trie node, -inf at nodes no SID
    of `sids` [S, depth] (token ids of SIDs of the trie) passes through. `interactions` [S]: each
    SID's item's training interactions."""
    sids = sids.to(trie.device)
    mass = torch.zeros(trie.num_nodes, dtype=torch.float64, device=trie.device)
    weight = interactions.to(trie.device, torch.float64) + 1.0
    for d in range(trie.depth + 1):
        nodes = trie.states_for_prefixes(sids, torch.full((len(sids),), d, device=trie.device))
        if (nodes < 0).any():
            raise ValueError(f"a SID of `sids` leaves the trie at level {d}")
        mass.index_add_(0, nodes, weight)
    return mass.log().float()


def code_bias(trie: SidTrie, adjust: torch.Tensor) -> list[torch.Tensor]:
    """Per depth d, [nodes at depth d, level d's codes] (trie.columns[d]): tau log prior of each code
    after each node, `adjust` [num_nodes] (tau x log_mass) at the child it leads to less the node's
    own; 0 where the trie has no such child. Built once, so that a training step only gathers rows."""
    tables = []
    for d in range(trie.depth):
        nodes = torch.arange(trie.level_start[d], trie.level_start[d + 1], device=trie.device)
        codes = trie.columns[d]
        child = trie.advance(nodes.repeat_interleave(len(codes)), codes.repeat(len(nodes))).reshape(len(nodes), -1)
        tables.append(torch.where(child >= 0, adjust[child.clamp(min=0)] - adjust[nodes][:, None], 0.0))
    return tables
