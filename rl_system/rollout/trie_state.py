"""`TrieConstraint`: the state of every request slot as device tensors (phase, trie node), so one
step costs a fixed handful of tensor ops for the whole batch: a batched trie transition for the
tokens sampled last step and one masked fill of the logits.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from indexing.trie import TrieMasker
from rl_system.rollout.constraint import (
    FORCED,
    FREE,
    OFF,
    SID,
    UNLIMITED,
    ConstraintError,
    ConstraintTable,
    RequestConstraint,
)

if TYPE_CHECKING:
    pass


class TrieConstraint:
    """Phase and trie state of every request slot, updated and applied with batched tensor ops."""

    def __init__(self, table: ConstraintTable, vocab_size: int, max_slots: int, device: torch.device | str):
        self.table = table
        self.trie = table.build_trie(vocab_size, device)
        self.device = self.trie.device
        self.phase = torch.full((max_slots,), OFF, dtype=torch.long, device=self.device)
        self.node = torch.zeros(max_slots, dtype=torch.long, device=self.device)
        self.reasoning = torch.zeros(max_slots, dtype=torch.bool, device=self.device)
        self.forced = torch.zeros(max_slots, dtype=torch.long, device=self.device)
        self.budget = torch.full((max_slots,), UNLIMITED, dtype=torch.long, device=self.device)
        # -1 never equals a sampled token: without reasoning tokens the FREE phase is never entered.
        self.answer_open, self.answer_close, self.think_open, self.think_close = (
            -1 if t is None else t
            for t in (table.answer_open_id, table.answer_close_id, table.think_open_id, table.think_close_id))
        self.eos = table.eos_id
        # What free text may not write: the end of turn, and every tag but `</think>`.
        self.banned_in_text = torch.tensor([t for t in (self.eos, self.think_open, self.answer_open, self.answer_close)
                                            if t >= 0], dtype=torch.long, device=self.device)
        # Reused allowed-mask buffer for all-constrained batches: only the allowed blocks are written
        # and reset each step, instead of a fresh [B, V] mask.
        self.masker = TrieMasker(self.trie, max_slots)
        self.neg_inf = torch.tensor(float("-inf"), device=self.device)

    def check_mode(self, mode: str | None, max_tokens: int | None = None) -> None:
        if mode != "reasoning":
            return
        self.table.require_reasoning()
        if max_tokens is not None and max_tokens < self.table.answer_length:
            raise ConstraintError(f"reasoning mode needs max_tokens >= {self.table.answer_length} (tags, SID and EOS), "
                                  f"got {max_tokens}")

    def _free_budget(self, req: RequestConstraint) -> int:
        return UNLIMITED if req.max_tokens is None else req.max_tokens - self.table.answer_length

    def reset(self, slots: Sequence[int], requests: Sequence[RequestConstraint]) -> None:
        """Start fresh requests in `slots` (one small host-to-device write per field)."""
        if not slots:
            return
        for req in requests:
            self.check_mode(req.mode, req.max_tokens)
        idx = torch.tensor(list(slots), dtype=torch.long, device=self.device)
        phase = [OFF if r.mode is None else SID if r.mode == "direct" else FORCED for r in requests]
        self.phase[idx] = torch.tensor(phase, dtype=torch.long, device=self.device)
        self.reasoning[idx] = torch.tensor([r.mode == "reasoning" for r in requests], device=self.device)
        self.forced[idx] = max(self.think_open, 0)
        self.budget[idx] = torch.tensor([self._free_budget(r) for r in requests], dtype=torch.long, device=self.device)
        width = max(len(r.prefix) for r in requests)
        if width == 0:
            self.node[idx] = 0
            return
        prefixes = torch.zeros(len(requests), width, dtype=torch.long)
        for row, req in enumerate(requests):
            prefixes[row, : len(req.prefix)] = torch.tensor(req.prefix, dtype=torch.long)
        lengths = torch.tensor([len(r.prefix) for r in requests])
        self.node[idx] = self.trie.states_for_prefixes(prefixes, lengths)

    def move(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Copy the state of slots `src` to slots `dst` (simultaneously, so swaps work)."""
        for t in (self.phase, self.node, self.reasoning, self.forced, self.budget):
            t[dst] = t[src].clone()

    def absorb(self, slots: torch.Tensor, tokens: torch.Tensor, take: torch.Tensor | None = None) -> None:
        """Advance slots by the token each sampled last step; rows where `take` is False keep their state."""
        phase, node, forced, budget = self.phase[slots], self.node[slots], self.forced[slots], self.budget[slots]
        text = (phase == FREE) | (phase == FORCED)
        new_budget = torch.where((phase == FREE) & (budget > 0), budget - 1, budget)
        new_node = torch.where(phase == SID, self.trie.advance(node, tokens), torch.zeros_like(node))
        new_phase = torch.where(text & (tokens == self.answer_open), SID, phase)
        new_phase = torch.where(text & (tokens == self.think_open), FREE, new_phase)
        closed = text & (tokens == self.think_close)
        exhausted = (new_phase == FREE) & (new_budget == 0)
        new_phase = torch.where(closed | exhausted, FORCED, new_phase)
        new_forced = torch.where(closed, self.answer_open, torch.where(exhausted, self.think_close, forced))
        if take is not None:
            new_node, new_phase = torch.where(take, new_node, node), torch.where(take, new_phase, phase)
            new_forced, new_budget = torch.where(take, new_forced, forced), torch.where(take, new_budget, budget)
        self.node[slots] = torch.where(new_phase == SID, new_node, node)
        self.phase[slots] = new_phase
        self.forced[slots] = new_forced
        self.budget[slots] = new_budget

    def constrained_rows(self, slots: torch.Tensor) -> tuple[bool, bool, bool]:
        """(any, all) of `slots` in their SID phase, and whether any is in free or forced text: one
        host sync on GPUs."""
        phase = self.phase[slots]
        sid = phase == SID
        text = (phase == FREE) | (phase == FORCED)
        any_sid, all_sid, any_text = torch.stack([sid.any(), sid.all(), text.any()]).tolist()
        return any_sid, all_sid, any_text

    def mask_(self, logits: torch.Tensor, slots: torch.Tensor, any_sid: bool = True,
              all_sid: bool = False, any_text: bool = True) -> torch.Tensor:
        """Set every token a row may not emit to -inf, in place. The caller may say what it knows of
        the batch (`any_sid`: some row is in its SID phase; `all_sid`: every row is; `any_text`: some
        row is in free or forced text) to skip work: the trie mask when no row needs it, everything but
        the one-pass trie mask when all do, the full-width text steering when no row writes text."""
        node = self.node[slots]
        if all_sid:
            allowed = self.masker.mask(node)
            self._forbid_wrong_closer(allowed, slots, node)
            return torch.where(allowed, logits, self.neg_inf, out=logits)
        if any_sid:
            allowed = self.trie.allowed_mask(node)
            self._forbid_wrong_closer(allowed, slots, node)
            allowed |= (self.phase[slots] != SID).unsqueeze(1)
            logits.masked_fill_(~allowed, float("-inf"))
        return self._steer_text_(logits, slots) if any_text else logits

    def _steer_text_(self, logits: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Free-text rows lose the banned tokens; forced rows keep only their forced token."""
        phase = self.phase[slots]
        if self.banned_in_text.numel():
            banned = logits.index_select(1, self.banned_in_text)
            logits[:, self.banned_in_text] = torch.where((phase == FREE).unsqueeze(1), self.neg_inf, banned)
        token = self.forced[slots].unsqueeze(1)
        kept = logits.gather(1, token)
        logits.masked_fill_((phase == FORCED).unsqueeze(1), float("-inf"))
        return logits.scatter_(1, token, kept)

    def _forbid_wrong_closer(self, allowed: torch.Tensor, slots: torch.Tensor, node: torch.Tensor) -> None:
        # The trie lets both closers follow a complete SID; a reasoning row at a leaf must close the
        # answer first, every other row (direct, or after `</answer>`) may only end. Writing False
        # keeps the masker's invariant: outside the blocks it wrote, its buffer is all False.
        if self.answer_close >= 0:
            forbid = torch.where(self.reasoning[slots] & self.trie.is_leaf(node), self.eos, self.answer_close)
            allowed.scatter_(1, forbid.unsqueeze(1), False)
