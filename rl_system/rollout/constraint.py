"""The trie constraint's tables and per-request switches, shared by the driver and vLLM's processors.

Trie-constrained decoding inside vLLM: one constraint, two thin adapters for vLLM's two
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
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from indexing.sid import SidIndex
from indexing.trie import SidTrie

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig


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
            "build the engine with rl_system.rollout.engine.build_llm")
    return ConstraintTable.load(path)
