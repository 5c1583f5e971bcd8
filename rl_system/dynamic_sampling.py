"""Variance-guided dynamic sampling (DESIGN.md section 5, DAPO-style).

A group whose rewards are all equal has zero advantage for every completion under any
group-relative estimator, so it only dilutes the batch. Such groups are dropped and more prompts
are sampled until the train batch holds enough informative groups, up to a cap on extra rounds.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Generic, Protocol, Sequence, TypeVar

import numpy as np

log = logging.getLogger(__name__)

KEEP, ALL_MISS, ALL_HIT, CONSTANT = "keep", "all_miss", "all_hit", "constant"
DROP_KINDS = (ALL_MISS, ALL_HIT, CONSTANT)
# Never ask for more than this many times the missing groups in one extra round, however low the
# observed keep rate: bounds the cost of a round when almost everything is being dropped.
MAX_OVERSAMPLE = 4.0


class ScoredGroup(Protocol):
    rewards: np.ndarray  # [G] rewards of the group's completions
    hits: np.ndarray  # [G] exact hits


G = TypeVar("G", bound=ScoredGroup)


def classify(rewards: np.ndarray, hits: np.ndarray) -> np.ndarray:
    """Label each group [P, G]: keep, or why it is dropped.

    all_hit: every completion is exact; all_miss: every reward is 0; constant: the same nonzero
    partial reward everywhere (e.g. all completions share the target's first level).
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    hits = np.asarray(hits, dtype=bool)
    flat = rewards.max(axis=1) == rewards.min(axis=1)
    labels = np.full(rewards.shape[0], KEEP, dtype=object)
    labels[flat & hits.all(axis=1)] = ALL_HIT
    labels[flat & ~hits.all(axis=1) & (rewards[:, 0] == 0)] = ALL_MISS
    labels[flat & ~hits.all(axis=1) & (rewards[:, 0] != 0)] = CONSTANT
    return labels


@dataclass
class FillResult(Generic[G]):
    kept: list[G]
    target: int  # groups the train batch wanted
    sampled: int  # groups generated over all rounds
    rounds: int  # generation rounds used (1 = no resampling)
    dropped: dict[str, int] = field(default_factory=dict)  # all_miss / all_hit / constant -> count
    surplus: int = 0  # informative groups generated beyond the batch and discarded
    informative: int = 0  # kept groups whose rewards differ (all of them unless flat groups are kept)

    @property
    def full(self) -> bool:
        return len(self.kept) == self.target

    def shares(self) -> dict[str, float]:
        """Dropped groups of each kind as a share of all sampled groups (metrics `dropped/<kind>`)."""
        return {kind: self.dropped.get(kind, 0) / max(self.sampled, 1) for kind in DROP_KINDS}


class BatchFiller:
    """Collects informative groups until `target_groups` are kept or `max_extra_rounds` are spent.

    With `drop_flat=False` every sampled group is kept in one round (zero-variance groups then
    contribute only their KL term, as in TRL's GRPOTrainer): the like-for-like setting for
    throughput comparisons, not a training recipe."""

    def __init__(self, target_groups: int, max_extra_rounds: int, drop_flat: bool = True):
        if target_groups < 1:
            raise ValueError(f"target_groups must be >= 1, got {target_groups}")
        if max_extra_rounds < 0:
            raise ValueError(f"max_extra_rounds must be >= 0, got {max_extra_rounds}")
        self.target_groups = target_groups
        self.max_extra_rounds = max_extra_rounds if drop_flat else 0
        self.drop_flat = drop_flat

    def fill(self, sample: Callable[[int], Sequence[G]]) -> FillResult[G]:
        """sample(n) generates and scores n new prompt groups."""
        kept: list[G] = []
        dropped = {kind: 0 for kind in DROP_KINDS}
        sampled = informative = 0
        rounds = 0
        ask = self.target_groups
        while rounds <= self.max_extra_rounds:
            groups = list(sample(ask))
            rounds += 1
            sampled += len(groups)
            if groups:
                labels = classify(np.stack([g.rewards for g in groups]), np.stack([g.hits for g in groups]))
                kept.extend(g for g, label in zip(groups, labels) if label == KEEP or not self.drop_flat)
                informative += int(np.sum(labels == KEEP))
                for kind in DROP_KINDS if self.drop_flat else ():
                    dropped[kind] += int(np.sum(labels == kind))
            missing = self.target_groups - len(kept)
            if missing <= 0:
                break
            keep_rate = len(kept) / max(sampled, 1)
            ask = math.ceil(missing * min(1.0 / keep_rate if keep_rate > 0 else MAX_OVERSAMPLE, MAX_OVERSAMPLE))
            if rounds <= self.max_extra_rounds:
                log.info("dynamic sampling: %d/%d groups kept after round %d, asking for %d more",
                         len(kept), self.target_groups, rounds, ask)
        surplus = max(len(kept) - self.target_groups, 0)
        result = FillResult(kept=kept[:self.target_groups], target=self.target_groups, sampled=sampled, rounds=rounds,
                            dropped=dropped, surplus=surplus,
                            informative=min(informative, self.target_groups))
        if not result.full:
            log.warning("dynamic sampling: only %d/%d informative groups after %d rounds (%d sampled)",
                        len(result.kept), self.target_groups, rounds, sampled)
        return result
