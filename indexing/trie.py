"""Prefix trie over the token ids of every SID, queried with tensor operations only.

Shared by evaluation (constrained beam), rollouts (vLLM logits processor) and serving. A decoding
step holds one trie state per row; a query is a few gathers and block writes whatever the batch
size, with no Python loop over rows or over the vocabulary (only over the <= depth + 1 levels).

Layout. Nodes are numbered breadth first: node 0 is the root, the nodes of depth d are the range
`level_start[d]..level_start[d+1]-1`, and the leaves (complete SIDs) are the last block. The tokens
that may follow a depth-d node are drawn from `columns[d]`, the distinct token ids found at
position d of any SID, or their whole id range when it is not much wider (for leaves: the end
tokens). Each inner node keeps one bit per column of its
depth (`bits`, packed 8 per byte: 32 bytes per node for 256 codes, about 1 MB for Beauty). A mask
query unpacks the bits of every row and writes them as one [rows, columns] block per depth present
in the batch; when a level's tokens are contiguous ids, as they are after `add_tokens` of the SID
vocabulary, that block is a plain slice of the output. Transitions search one sorted key array
(node * V + token) with `searchsorted`.

States: a node id >= 0, `INVALID` (-1) once a step left the trie, `CLOSED` (-2) after an end token
followed a complete SID. Both non-node states allow only the end tokens, so a row that somehow left
the trie closes at once and a softmax over its logits never meets an all -inf row.
"""
from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import torch

from indexing.sid import SidError, SidIndex

INVALID = -1
CLOSED = -2


def sid_children(sids: Sequence[Sequence[int]]) -> dict[tuple[int, ...], set[int]]:
    """Every proper prefix of the SIDs (token ids, the empty one included) -> the tokens that may
    follow it: the trie as a plain dict, for host-side lookups that need no tensors."""
    children: dict[tuple[int, ...], set[int]] = {}
    for sid in sids:
        sid = tuple(sid)
        for i in range(len(sid)):
            children.setdefault(sid[:i], set()).add(sid[i])
    return children

Cols = slice | torch.Tensor  # a level's token ids: a slice when contiguous, else an index tensor
Group = tuple[torch.Tensor | None, Cols, torch.Tensor]  # rows (None: all), columns, allowed bits


class SidTrie:
    def __init__(
        self,
        *,
        vocab_size: int,
        level_start: list[int],
        columns: list[torch.Tensor],
        bits: torch.Tensor,
        edge_keys: torch.Tensor,
        edge_child: torch.Tensor,
        leaf_sid: torch.Tensor,
    ) -> None:
        self.vocab_size = vocab_size
        self.level_start = level_start
        self.columns = columns  # columns[depth] is the end tokens
        self.bits = bits
        self.edge_keys = edge_keys
        self.edge_child = edge_child
        self.leaf_sid = leaf_sid
        self._bounds = torch.tensor(level_start[1:-1])  # first node id of depths 1..D
        self._shifts = torch.arange(8, dtype=torch.uint8)
        self._cols = [_as_cols(c) for c in columns]
        popcount = torch.tensor([bin(b).count("1") for b in range(256)], dtype=torch.long)
        self._children = popcount[bits.long()].sum(1)  # allowed next tokens of each inner node

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
        Duplicate sequences collapse into one leaf, which remembers the first row (`sid_of_leaf`).
        """
        seqs = sids.long().cpu() if isinstance(sids, torch.Tensor) else torch.as_tensor(sids, dtype=torch.long)
        if seqs.ndim != 2 or seqs.shape[0] == 0 or seqs.shape[1] == 0:
            raise SidError(f"SIDs must form a non-empty [num_sids, depth] table of token ids, got shape {tuple(seqs.shape)}")
        n, depth = seqs.shape
        if int(seqs.min()) < 0 or int(seqs.max()) >= vocab_size:
            raise SidError(f"SID token ids must lie in [0, {vocab_size}), got [{int(seqs.min())}, {int(seqs.max())}]")
        ends = torch.as_tensor(list(end_token_ids), dtype=torch.long)
        if ends.numel() == 0 or int(ends.min()) < 0 or int(ends.max()) >= vocab_size:
            raise SidError(f"end_token_ids must be a non-empty list of ids in [0, {vocab_size}), got {list(end_token_ids)}")
        ends = torch.unique(ends)
        overlap = torch.isin(ends, seqs)
        if overlap.any():
            raise SidError(f"end tokens {ends[overlap].tolist()} also occur inside SIDs; they must be distinct")

        columns = [_level_columns(seqs[:, d]) for d in range(depth)] + [ends]
        width = max(c.numel() for c in columns[:depth])
        width += -width % 8
        # Level by level, the children of the depth-d nodes are the distinct (parent, token) pairs;
        # numbering them in sorted key order keeps the edge keys sorted for searchsorted.
        parent = torch.zeros(n, dtype=torch.long)
        level_start = [0, 1]
        keys, children, edge_parent, edge_col = [], [], [], []
        for d in range(depth):
            key = parent * vocab_size + seqs[:, d]
            uniq, inverse = torch.unique(key, return_inverse=True)
            keys.append(uniq)
            children.append(level_start[-1] + torch.arange(uniq.numel()))
            edge_parent.append(uniq // vocab_size)
            edge_col.append(torch.searchsorted(columns[d], uniq % vocab_size))
            parent = level_start[-1] + inverse
            level_start.append(level_start[-1] + uniq.numel())
        first_leaf = level_start[-2]

        dense = torch.zeros(first_leaf, width, dtype=torch.bool)
        dense[torch.cat(edge_parent), torch.cat(edge_col)] = True
        weights = (1 << torch.arange(8)).to(torch.uint8)
        bits = (dense.view(first_leaf, width // 8, 8).to(torch.uint8) * weights).sum(-1, dtype=torch.uint8)

        leaf_sid = torch.full((level_start[-1] - first_leaf,), -1, dtype=torch.long)
        leaf_sid.scatter_reduce_(0, parent - first_leaf, torch.arange(n), reduce="amin", include_self=False)
        trie = cls(vocab_size=vocab_size, level_start=level_start, columns=columns, bits=bits,
                   edge_keys=torch.cat(keys), edge_child=torch.cat(children), leaf_sid=leaf_sid)
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

        Row r of the trie's SIDs is `index.items()[r]`, so `sid_of_leaf` maps leaves back to items.
        """
        rows = []
        for item in index.items():
            try:
                rows.append([token_ids[t] for t in index.tokens(item)])
            except KeyError as exc:
                raise SidError(f"SID token {exc.args[0]} of item {item} is not in the tokenizer vocabulary") from None
        return cls.build(rows, vocab_size, end_token_ids, device)

    def to(self, device: str | torch.device) -> "SidTrie":
        for name in ("bits", "edge_keys", "edge_child", "leaf_sid", "_bounds", "_shifts", "_children"):
            setattr(self, name, getattr(self, name).to(device))
        self.columns = [c.to(device) for c in self.columns]
        self._cols = [_as_cols(c) for c in self.columns]
        return self

    @property
    def device(self) -> torch.device:
        return self.edge_keys.device

    @property
    def depth(self) -> int:
        return len(self.columns) - 1

    @property
    def end_token_ids(self) -> torch.Tensor:
        return self.columns[-1]

    @property
    def first_leaf(self) -> int:
        return self.level_start[-2]

    @property
    def num_nodes(self) -> int:
        return self.level_start[-1]

    @property
    def num_sids(self) -> int:
        """Distinct SIDs (leaves)."""
        return self.num_nodes - self.first_leaf

    # ------------------------------------------------------------------ transitions
    def root(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, dtype=torch.long, device=self.device)

    def advance(self, states: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Next state of every row after `tokens` [B]: a child node, CLOSED after an end token at a
        leaf, INVALID for any other token (INVALID and CLOSED rows stay INVALID)."""
        tokens = tokens.to(self.device).long()
        key = states.clamp(min=0) * self.vocab_size + tokens
        pos = torch.searchsorted(self.edge_keys, key).clamp(max=self.edge_keys.numel() - 1)
        # An out-of-range token would alias another node's key, so it is rejected explicitly.
        hit = (self.edge_keys[pos] == key) & (states >= 0) & (tokens >= 0) & (tokens < self.vocab_size)
        closes = self.is_leaf(states) & torch.isin(tokens, self.end_token_ids)
        return torch.where(closes, CLOSED, torch.where(hit, self.edge_child[pos], INVALID))

    def states_for_prefixes(self, prefix_ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """States after the first `lengths[b]` tokens of row b of `prefix_ids` [B, L] (default: all L)."""
        prefix_ids = prefix_ids.to(self.device).long()
        b, length = prefix_ids.shape
        lengths = torch.full((b,), length, device=self.device) if lengths is None else lengths.to(self.device)
        states = self.root(b)
        for t in range(length):  # L <= depth + 1: a loop over positions, never over rows
            states = torch.where(t < lengths, self.advance(states, prefix_ids[:, t]), states)
        return states

    def num_children(self, states: torch.Tensor) -> torch.Tensor:
        """How many SID tokens may follow each state: 0 for a leaf and for a non-node state."""
        inner = (states >= 0) & (states < self.first_leaf)
        return torch.where(inner, self._children[torch.where(inner, states, 0)], 0)

    def first_child(self, states: torch.Tensor) -> torch.Tensor:
        """The lowest token id that may follow each inner node (its only one where num_children is
        1); meaningless for other states."""
        key = states.clamp(min=0) * self.vocab_size
        pos = torch.searchsorted(self.edge_keys, key).clamp(max=self.edge_keys.numel() - 1)
        return self.edge_keys[pos] - key

    # ------------------------------------------------------------------ allowed tokens
    def groups(self, states: torch.Tensor) -> Iterator[Group]:
        """The allowed tokens of a batch, one block per depth present: (rows, columns, bits).

        `rows` is None when every row is at that depth (the usual case in a decoding step), so the
        block is written without any row indexing. Leaves and non-node states form the last group,
        over the end tokens, all allowed.
        """
        states = states.to(self.device)
        if states.numel() == 0:
            return
        node = torch.where(states >= 0, states, self.num_nodes)
        depth = torch.searchsorted(self._bounds, node, right=True)  # non-node rows land at `depth`
        lo, hi = int(depth.min()), int(depth.max())
        for d in range(lo, hi + 1):
            rows = None if lo == hi else torch.nonzero(depth == d).flatten()
            if rows is not None and rows.numel() == 0:
                continue
            n_cols = self.columns[d].numel()
            if d == self.depth:
                count = states.numel() if rows is None else rows.numel()
                yield rows, self._cols[d], torch.ones(count, n_cols, dtype=torch.bool, device=self.device)
                continue
            packed = self.bits[node if rows is None else node[rows]]
            unpacked = (packed.unsqueeze(-1) >> self._shifts) & 1
            yield rows, self._cols[d], unpacked.view(packed.shape[0], -1)[:, :n_cols].bool()

    def allowed_mask(self, states: torch.Tensor) -> torch.Tensor:
        """Bool [B, V]: the tokens each row may emit next."""
        mask = torch.zeros(states.numel(), self.vocab_size, dtype=torch.bool, device=self.device)
        for rows, cols, bits in self.groups(states):
            _write(mask, rows, cols, bits)
        return mask

    def apply(self, logits: torch.Tensor, states: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """Logits [B, V] with every disallowed token set to -inf (in place if asked, e.g. in vLLM)."""
        kept = [(rows, cols, _read(logits, rows, cols).masked_fill(~bits, float("-inf")))
                for rows, cols, bits in self.groups(states)]
        out = logits.fill_(float("-inf")) if inplace else torch.full_like(logits, float("-inf"))
        for rows, cols, vals in kept:
            _write(out, rows, cols, vals)
        return out

    def topk(self, logits: torch.Tensor, states: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k best allowed tokens per row: (values [B, k], token ids [B, k]), best first.

        Sorts only the allowed tokens, never the whole vocabulary. Rows with fewer than k allowed
        tokens are padded with -inf values (and an end token id); check `isfinite` before use.
        """
        width = max(k, max(c.numel() for c in self.columns))
        b = states.numel()
        vals = torch.full((b, width), float("-inf"), dtype=logits.dtype, device=logits.device)
        ids = torch.full((b, width), int(self.end_token_ids[0]), dtype=torch.long, device=self.device)
        for rows, cols, bits in self.groups(states):
            tokens = _col_ids(cols, self.device)
            n = tokens.numel()
            got = _read(logits, rows, cols).masked_fill(~bits, float("-inf"))
            _write(vals, rows, slice(0, n), got)
            _write(ids, rows, slice(0, n), tokens.expand(got.shape[0], n))
        top, idx = vals.topk(k, dim=1)
        return top, ids.gather(1, idx)

    # ------------------------------------------------------------------ complete SIDs
    def is_leaf(self, states: torch.Tensor) -> torch.Tensor:
        return states >= self.first_leaf

    def sid_of_leaf(self, states: torch.Tensor) -> torch.Tensor:
        """Row index (in the build order) of the SID ending at each leaf state, -1 for other states."""
        leaf = self.is_leaf(states)
        return torch.where(leaf, self.leaf_sid[torch.where(leaf, states - self.first_leaf, 0)], -1)

    def contains_batch(self, seqs: torch.Tensor) -> torch.Tensor:
        """Bool [B]: whether each row of token ids [B, depth] is exactly a SID."""
        if seqs.shape[1] != self.depth:
            return torch.zeros(seqs.shape[0], dtype=torch.bool, device=self.device)
        return self.is_leaf(self.states_for_prefixes(seqs))

    def contains(self, seq: Sequence[int]) -> bool:
        if len(seq) != self.depth:
            return False
        return bool(self.contains_batch(torch.as_tensor([list(seq)], dtype=torch.long, device=self.device))[0])


def _level_columns(tokens: torch.Tensor) -> torch.Tensor:
    """The column space of one level: its distinct tokens, widened to their whole id range when that
    range is at most 4x as wide, so that the level is written as one slice even if some codes are
    unused (LETTER's Beauty level a uses 197 of 256 codes)."""
    used = torch.unique(tokens)
    lo, hi = int(used[0]), int(used[-1]) + 1
    return torch.arange(lo, hi) if hi - lo <= 4 * used.numel() else used


def _as_cols(tokens: torch.Tensor) -> Cols:
    """A sorted token list as a slice when it is a contiguous id range (a strided block write)."""
    lo, hi = int(tokens[0]), int(tokens[-1]) + 1
    return slice(lo, hi) if hi - lo == tokens.numel() else tokens


def _col_ids(cols: Cols, device: torch.device) -> torch.Tensor:
    return torch.arange(cols.start, cols.stop, device=device) if isinstance(cols, slice) else cols


def _read(t: torch.Tensor, rows: torch.Tensor | None, cols: Cols) -> torch.Tensor:
    if rows is None:
        return t[:, cols]
    return t[rows, cols] if isinstance(cols, slice) else t[rows.unsqueeze(1), cols]


def _write(t: torch.Tensor, rows: torch.Tensor | None, cols: Cols, vals: torch.Tensor) -> None:
    if rows is None:
        t[:, cols] = vals
    elif isinstance(cols, slice):
        t[rows, cols] = vals
    else:
        t[rows.unsqueeze(1), cols] = vals


class TrieMasker:
    """Reusable [max_batch, V] outputs, so that a step costs O(B x allowed columns), not O(B x V).

    Each call resets only the blocks the previous call wrote and writes the new ones; the tensor it
    returns is a view of its buffer, valid until the next call. The consumer must not write into
    it outside the allowed positions (temperature scaling, top-k/top-p and penalties on allowed
    positions are fine); where that cannot be promised, use `SidTrie.apply(logits, states, inplace=True)`.
    """

    def __init__(self, trie: SidTrie, max_batch: int) -> None:
        self.trie = trie
        self.max_batch = max_batch
        self._mask: torch.Tensor | None = None
        self._logits: torch.Tensor | None = None
        # (batch size, rows, columns) of every block the last call wrote: all that must be reset.
        self._mask_written: list[tuple[int, torch.Tensor | None, Cols]] = []
        self._logits_written: list[tuple[int, torch.Tensor | None, Cols]] = []

    def _groups(self, states: torch.Tensor) -> list[Group]:
        if states.numel() > self.max_batch:
            raise ValueError(f"batch of {states.numel()} rows exceeds TrieMasker max_batch={self.max_batch}")
        return list(self.trie.groups(states))

    def mask(self, states: torch.Tensor) -> torch.Tensor:
        """Bool [B, V] of allowed tokens (a view of the reused buffer)."""
        groups = self._groups(states)
        if self._mask is None:
            self._mask = torch.zeros(self.max_batch, self.trie.vocab_size, dtype=torch.bool, device=self.trie.device)
        for b, rows, cols in self._mask_written:
            _write(self._mask[:b], rows, cols, False)
        b = states.numel()
        for rows, cols, bits in groups:
            _write(self._mask[:b], rows, cols, bits)
        self._mask_written = [(b, rows, cols) for rows, cols, _ in groups]
        return self._mask[:b]

    def apply(self, logits: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """Logits [B, V] with disallowed tokens at -inf (a view of the reused buffer; `logits` untouched)."""
        groups = self._groups(states)
        if self._logits is None or self._logits.dtype != logits.dtype:
            self._logits = torch.full((self.max_batch, self.trie.vocab_size), float("-inf"),
                                      dtype=logits.dtype, device=self.trie.device)
            self._logits_written = []
        for b, rows, cols in self._logits_written:
            _write(self._logits[:b], rows, cols, float("-inf"))
        b = states.numel()
        for rows, cols, bits in groups:
            _write(self._logits[:b], rows, cols, _read(logits, rows, cols).masked_fill(~bits, float("-inf")))
        self._logits_written = [(b, rows, cols) for rows, cols, _ in groups]
        return self._logits[:b]
