"""The data that passes between the RL roles: prompt -> rollout group -> scored group -> train batch,
and the reward service's reply. Plain dataclasses over lists and numpy arrays, so the driver can
name them without importing torch or vLLM.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np


@dataclass(frozen=True)
class Prompt:
    uid: int  # position in the endless stream (epoch * n + offset): unique across the run
    user: int
    text: str
    target: int
    target_codes: tuple[int, ...]
    history: tuple[int, ...] = ()  # item ids, oldest first (what a teacher model scores)
    target_ids: tuple[int, ...] = ()  # the target SID's token ids (CE anchor, injected target)


@dataclass(frozen=True)
class Completion:
    token_ids: list[int]
    text: str
    logprobs: list[float]  # per generated token, under the sampling (processed) distribution
    finish_reason: str | None


@dataclass(frozen=True)
class RolloutGroup:
    prompt_ids: list[int]
    completions: list[Completion]
    weight_version: int


@dataclass(frozen=True)
class BeamCandidate:
    token_ids: tuple[int, ...]
    token_logprobs: tuple[float, ...]  # per SID token, constrained (normalised over the trie's children)

    @property
    def logprob(self) -> float:
        return sum(self.token_logprobs)


@dataclass
class ScoredGroup:
    prompt: Prompt
    rollout: RolloutGroup
    rewards: np.ndarray  # [G] the reward the advantage uses (residual, binary or beam)
    hits: np.ndarray  # [G] exact hits
    lcp: np.ndarray  # [G] matched levels
    format_ok: np.ndarray  # [G]
    teacher_gate: bool | None = None  # whether the teacher's reward reached this group (None: no teacher)


@dataclass
class TrainBatch:
    """Scored completions, one row per completion (a prompt appears once per completion of its group)."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    advantages: list[float]
    # Per completion token, from the rollout engine; NaN for a row no engine sampled (an injected
    # target), whose old logprobs the learner computes itself.
    rollout_logprobs: list[list[float]] | None = None
    loss_mask: list[list[int]] | None = None  # per completion token, 1 = trained; default all ones
    # Rows that are the prompt's target SID for the cross-entropy anchor (`rl.ce_coef`), not samples:
    # they enter the CE term only, never the policy-gradient or KL terms.
    anchor: list[bool] | None = None

    def __post_init__(self) -> None:
        n = len(self.completion_ids)
        for name in ("prompt_ids", "advantages", "rollout_logprobs", "loss_mask", "anchor"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"TrainBatch.{name} has {len(value)} rows, completion_ids has {n}")
        for name in ("rollout_logprobs", "loss_mask"):
            value = getattr(self, name)
            if value is not None:
                for i, (row, comp) in enumerate(zip(value, self.completion_ids)):
                    if len(row) != len(comp):
                        raise ValueError(f"TrainBatch.{name}[{i}] has {len(row)} entries for {len(comp)} completion tokens")
        for i, (p, c) in enumerate(zip(self.prompt_ids, self.completion_ids)):
            if not p or not c:
                raise ValueError(f"TrainBatch row {i}: prompt and completion must be non-empty "
                                 f"(got {len(p)} prompt and {len(c)} completion tokens)")

    def __len__(self) -> int:
        return len(self.completion_ids)

    def select(self, rows: Sequence[int]) -> "TrainBatch":
        def pick(xs):
            return None if xs is None else [xs[i] for i in rows]

        return TrainBatch(pick(self.prompt_ids), pick(self.completion_ids), pick(self.advantages),
                          pick(self.rollout_logprobs), pick(self.loss_mask), pick(self.anchor))

    def masked_out(self) -> "TrainBatch":
        """The same rows contributing nothing: a filler micro-batch that keeps collectives in step."""
        return replace(self, loss_mask=[[0] * len(c) for c in self.completion_ids])

    def _tokens(self, anchors: bool) -> int:
        masks = self.loss_mask or [[1] * len(c) for c in self.completion_ids]
        flags = self.anchor or [False] * len(self)
        return int(sum(sum(m) for m, a in zip(masks, flags) if a == anchors))

    def num_tokens(self) -> int:
        """Trained tokens of the sampled rows (the policy-gradient term's denominator)."""
        return self._tokens(False)

    def num_anchor_tokens(self) -> int:
        """Trained tokens of the anchor rows (the CE term's denominator)."""
        return self._tokens(True)


@dataclass(frozen=True)
class RewardReply:
    """Per-completion results as numpy arrays (the client side of a reply)."""

    format_ok: np.ndarray
    codes: np.ndarray
    item: np.ndarray
    exact: np.ndarray
    lcp: np.ndarray
    residual: np.ndarray
    binary: np.ndarray
    beam: np.ndarray | None
    teacher_logp: np.ndarray | None = None  # log p_T(item | history), -inf where no item
    teacher_rank: np.ndarray | None = None  # the item's 0-based catalogue rank under the teacher, -1 where none
    teacher_target_logp: np.ndarray | None = None  # log p_T(the row's target | history)
    # What a replica with the items' training popularity says of each completion's item
    # (rl_system.reward.objectives.popularity_fields): novelty in (0, 1], tail or head, training share.
    novelty: np.ndarray | None = None
    tail: np.ndarray | None = None
    share: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.residual)

    @classmethod
    def from_wire(cls, msg: dict[str, Any]) -> "RewardReply":
        def optional(key: str, dtype) -> np.ndarray | None:
            return None if msg.get(key) is None else np.asarray(msg[key], dtype=dtype)

        return cls(format_ok=np.asarray(msg["format_ok"], dtype=bool), codes=np.asarray(msg["codes"], dtype=np.int64),
                   item=np.asarray(msg["item"], dtype=np.int64), exact=np.asarray(msg["exact"], dtype=bool),
                   lcp=np.asarray(msg["lcp"], dtype=np.int64), residual=np.asarray(msg["residual"], dtype=np.float64),
                   binary=np.asarray(msg["binary"], dtype=np.float64), beam=optional("beam", np.float64),
                   teacher_logp=optional("teacher_logp", np.float64), teacher_rank=optional("teacher_rank", np.int64),
                   teacher_target_logp=optional("teacher_target_logp", np.float64),
                   novelty=optional("novelty", np.float64), tail=optional("tail", bool), share=optional("share", np.float64))

    @classmethod
    def concat(cls, parts: Sequence["RewardReply"]) -> "RewardReply":
        def optional(key: str) -> np.ndarray | None:
            values = [getattr(p, key) for p in parts]
            return None if any(v is None for v in values) else np.concatenate(values)

        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                     ("format_ok", "codes", "item", "exact", "lcp", "residual", "binary")),
                   **{key: optional(key) for key in ("beam", "teacher_logp", "teacher_rank", "teacher_target_logp", "novelty",
                                                        "tail", "share")})
