"""Prefix trie over the token ids of every SID, queried with tensor operations only.

Shared by evaluation (constrained beam), rollouts (vLLM logits processor) and serving. A decoding
step holds one trie state per row; a query costs a few gathers and one scatter whatever the batch
size, with no Python loop over rows or over the vocabulary.

Layout. Nodes are numbered breadth first; node 0 is the root, leaves (complete SIDs) sit at depth D.
The tokens that may follow a node at depth d are drawn from `columns[d]`: the distinct token ids
found at position d of any SID (for a leaf, the end tokens). `allowed[node, j]` says whether token
`columns[depth[node], j]` may follow the node. Rows are padded to the widest depth; padding columns
point at a token that is never allowed at that depth, so scattering a padded row writes only
False / -inf there. Memory is num_nodes x max-tokens-per-level bytes (about 12 MB for 12k items of
4 x 256 codes). Transitions use one sorted key array (node * V + token) and `searchsorted`.

States: a node id >= 0, `INVALID` (-1) once a step left the trie, `CLOSED` (-2) after an end token
followed a complete SID. Both non-node states allow only the end tokens, so a row that somehow
left the trie is closed at once and a softmax over its logits never sees an all -inf row.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from indexing.sid import SidError, SidIndex

INVALID = -1
CLOSED = -2


class SidTrie:
    def __init__(
        self,
        *,
        depth: int,
        vocab_size: int,
        num_sids: int,
        node_depth: torch.Tensor,
        allowed: torch.Tensor,
        columns: torch.Tensor,
        edge_keys: torch.Tensor,
        edge_child: torch.Tensor,
        leaf_sid: torch.Tensor,
        end_token_ids: torch.Tensor,
    ) -> None:
        self.depth = depth
        self.vocab_size = vocab_size
        self.num_sids = num_sids
        # Row num_nodes of node_depth / allowed is the shared row of INVALID and CLOSED states.
        self.node_depth = node_depth
        self.allowed = allowed
        self.columns = columns
        self.edge_keys = edge_keys
        self.edge_child = edge_child
        self.leaf_sid = leaf_sid
        self.end_token_ids = end_token_ids

    # ------------------------------------------------------------------ build
    @classmethod
    def build(
        cls,
        sids: Sequence[Sequence[int]] | torch.Tensor,
        vocab_size: int,
        end_token_ids: Sequence[int],
        device: str | torch.device = "cpu",
    ) -> "SidTrie":
        """Trie of token-id sequences, all of the same depth, over a vocabulary of `vocab_size`.

        `end_token_ids` may follow a complete SID (EOS in direct mode, `</answer>` in reasoning mode).
        """
        seqs = torch.as_tensor(sids, dtype=torch.long) if not isinstance(sids, torch.Tensor) else sids.long().cpu()
        if seqs.ndim != 2 or seqs.shape[0] == 0 or seqs.shape[1] == 0:
            raise SidError(f"SIDs must form a non-empty [num_sids, depth] table of token ids, got shape {tuple(seqs.shape)}")
        n, depth = seqs.shape
        if int(seqs.min()) < 0 or int(seqs.max()) >= vocab_size:
            raise SidError(f"SID token ids must lie in [0, {vocab_size}), got [{int(seqs.min())}, {int(seqs.max())}]")
        ends = torch.as_tensor(list(end_token_ids), dtype=torch.long)
        if ends.numel() == 0 or int(ends.min()) < 0 or int(ends.max()) >= vocab_size:
            raise SidError(f"end_token_ids must be a non-empty list of ids in [0, {vocab_size}), got {list(end_token_ids)}")
        ends = torch.unique(ends)
        overlap = set(ends.tolist()) & set(torch.unique(seqs).tolist())
        if overlap:
            raise SidError(f"end tokens {sorted(overlap)} also occur inside SIDs; they must be distinct")

        # Per depth: the column space (distinct tokens at that position) and each SID's column there.
        col_lists = [torch.unique(seqs[:, d]) for d in range(depth)] + [ends]
        width = max(c.numel() for c in col_lists)
        if width >= vocab_size:
            raise SidError(f"a SID position uses {width} distinct tokens, the whole vocabulary of {vocab_size}")
        columns = torch.empty(depth + 1, width, dtype=torch.long)
        for d, cols in enumerate(col_lists):
            columns[d, : cols.numel()] = cols
            columns[d, cols.numel():] = _first_absent(cols, vocab_size)

        # Level by level, children of a node are the distinct (parent, column) pairs; numbering them
        # in sorted key order makes every node's children contiguous and the edge keys sorted.
        parent = torch.zeros(n, dtype=torch.long)
        first_node = [0, 1]  # node ids of depth d start at first_node[d]
        edge_parent, edge_col, edge_child = [], [], []
        for d in range(depth):
            col = torch.searchsorted(col_lists[d], seqs[:, d].contiguous())
            key = parent * width + col
            uniq, inverse = torch.unique(key, return_inverse=True)
            start = first_node[d + 1]
            edge_parent.append(uniq // width)
            edge_col.append(uniq % width)
            edge_child.append(start + torch.arange(uniq.numel()))
            parent = start + inverse
            first_node.append(start + uniq.numel())
        num_nodes = first_node[-1]

        node_depth = torch.empty(num_nodes + 1, dtype=torch.long)
        for d in range(depth + 1):
            node_depth[first_node[d]: first_node[d + 1]] = d
        node_depth[num_nodes] = depth  # INVALID / CLOSED row behaves like a leaf: end tokens only

        allowed = torch.zeros(num_nodes + 1, width, dtype=torch.bool)
        parents, cols = torch.cat(edge_parent), torch.cat(edge_col)
        allowed[parents, cols] = True
        allowed[first_node[depth]:, : ends.numel()] = True

        # Already sorted: parents ascend across and within levels, and columns ascend with token id.
        edge_keys = parents * vocab_size + columns[node_depth[parents], cols]
        leaf_sid = torch.full((num_nodes,), -1, dtype=torch.long)
        # For duplicate sequences the first SID wins; scatter_reduce keeps the smallest row index.
        leaf_sid.scatter_reduce_(0, parent, torch.arange(n), reduce="amin", include_self=False)
        trie = cls(
            depth=depth,
            vocab_size=vocab_size,
            num_sids=first_node[depth + 1] - first_node[depth],
            node_depth=node_depth,
            allowed=allowed,
            columns=columns,
            edge_keys=edge_keys,
            edge_child=torch.cat(edge_child),
            leaf_sid=leaf_sid,
            end_token_ids=ends,
        )
        return trie.to(device)

    @classmethod
    def from_index(
        cls,
        index: SidIndex,
        token_ids: Mapping[str, int],
        vocab_size: int,
        end_token_ids: Sequence[int],
        device: str | torch.device = "cpu",
    ) -> "SidTrie":
        """Trie of a `SidIndex` whose tokens map to ids by `token_ids` (e.g. `tokenizer.get_vocab()`).

        Row r of the trie's SIDs is `index.items()[r]`, so `item_of_leaf` maps leaves back to items.
        """
        rows = []
        for item in index.items():
            try:
                rows.append([token_ids[t] for t in index.tokens(item)])
            except KeyError as exc:
                raise SidError(f"SID token {exc.args[0]} of item {item} is not in the tokenizer vocabulary") from None
        return cls.build(rows, vocab_size, end_token_ids, device)

    def to(self, device: str | torch.device) -> "SidTrie":
        for name in ("node_depth", "allowed", "columns", "edge_keys", "edge_child", "leaf_sid", "end_token_ids"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    @property
    def device(self) -> torch.device:
        return self.allowed.device

    @property
    def num_nodes(self) -> int:
        return self.leaf_sid.numel()

    # ------------------------------------------------------------------ queries
    def root(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, dtype=torch.long, device=self.device)

    def _row(self, states: torch.Tensor) -> torch.Tensor:
        return torch.where(states >= 0, states, self.num_nodes)

    def advance(self, states: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Next state of every row after `tokens` [B]: a child node, CLOSED after an end token at a
        leaf, INVALID for any other token (INVALID and CLOSED rows stay INVALID)."""
        tokens = tokens.to(self.device).long()
        key = states.clamp(min=0) * self.vocab_size + tokens
        pos = torch.searchsorted(self.edge_keys, key).clamp(max=self.edge_keys.numel() - 1)
        # An out-of-range token would alias another node's key, so it is rejected explicitly.
        hit = (self.edge_keys[pos] == key) & (states >= 0) & (tokens >= 0) & (tokens < self.vocab_size)
        nxt = torch.where(hit, self.edge_child[pos], INVALID)
        at_leaf = (states >= 0) & (self.node_depth[self._row(states)] == self.depth)
        closes = at_leaf & torch.isin(tokens, self.end_token_ids)
        return torch.where(closes, CLOSED, nxt)

    def states_for_prefixes(self, prefix_ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """States after the first `lengths[b]` tokens of row b of `prefix_ids` [B, L] (default: all L)."""
        prefix_ids = prefix_ids.to(self.device).long()
        b, length = prefix_ids.shape
        lengths = torch.full((b,), length, device=self.device) if lengths is None else lengths.to(self.device)
        states = self.root(b)
        for t in range(length):  # L <= depth + 1: a loop over positions, never over rows
            states = torch.where(t < lengths, self.advance(states, prefix_ids[:, t]), states)
        return states

    def _columns_of(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        row = self._row(states.to(self.device))
        return self.columns[self.node_depth[row]], self.allowed[row]

    def allowed_mask(self, states: torch.Tensor) -> torch.Tensor:
        """Bool [B, V]: the tokens each row may emit next."""
        cols, ok = self._columns_of(states)
        mask = torch.zeros(cols.shape[0], self.vocab_size, dtype=torch.bool, device=self.device)
        return mask.scatter_(1, cols, ok)

    def apply(self, logits: torch.Tensor, states: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """Logits [B, V] with every disallowed token set to -inf (in place if asked, e.g. in vLLM)."""
        cols, ok = self._columns_of(states)
        kept = logits.gather(1, cols).masked_fill(~ok, float("-inf"))
        out = logits.fill_(float("-inf")) if inplace else torch.full_like(logits, float("-inf"))
        return out.scatter_(1, cols, kept)

    def topk(self, logits: torch.Tensor, states: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k best allowed tokens per row: (values [B, k], token ids [B, k]).

        Works on the compact columns only, never sorting the whole vocabulary. Rows with fewer than
        k allowed tokens are padded with -inf values; check `isfinite` before using such a token.
        """
        cols, ok = self._columns_of(states)
        vals = logits.gather(1, cols).masked_fill(~ok, float("-inf"))
        if k > vals.shape[1]:
            pad = torch.full((vals.shape[0], k - vals.shape[1]), float("-inf"), dtype=vals.dtype, device=vals.device)
            vals = torch.cat([vals, pad], 1)
            cols = torch.cat([cols, cols[:, :1].expand(-1, pad.shape[1])], 1)
        top, idx = vals.topk(k, dim=1)
        return top, cols.gather(1, idx)

    def is_leaf(self, states: torch.Tensor) -> torch.Tensor:
        return (states >= 0) & (self.node_depth[self._row(states)] == self.depth)

    def sid_of_leaf(self, states: torch.Tensor) -> torch.Tensor:
        """Row index (in the build order) of the SID ending at each leaf state, -1 for other states."""
        return torch.where(self.is_leaf(states), self.leaf_sid[states.clamp(min=0)], -1)

    def contains_batch(self, seqs: torch.Tensor) -> torch.Tensor:
        """Bool [B]: whether each row of token ids [B, depth] is exactly a SID."""
        if seqs.shape[1] != self.depth:
            return torch.zeros(seqs.shape[0], dtype=torch.bool, device=self.device)
        return self.is_leaf(self.states_for_prefixes(seqs))

    def contains(self, seq: Sequence[int]) -> bool:
        if len(seq) != self.depth:
            return False
        return bool(self.contains_batch(torch.as_tensor([list(seq)], dtype=torch.long, device=self.device))[0])


def _first_absent(present: torch.Tensor, vocab_size: int) -> int:
    """Smallest token id not in the sorted tensor `present` (exists because present < vocab_size)."""
    ids = torch.arange(present.numel() + 1)
    return int(ids[~torch.isin(ids, present)][0])
