"""Generate, then re-rank: a policy's beam re-scored by a teacher (a trained SASRec), score =
policy log p(SID | prompt) + weight x log p_T(item | history). weight 0 keeps the beam's order,
weight inf is the teacher's order within the beam. Pure functions over [users, width] arrays; -1 in
`items` marks an empty slot (a beam that found fewer SIDs), which never ranks above a candidate.
`gream eval` and `gream serve` apply them through rl_system.answer_modes (eval.rerank)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from sft.metrics import ranks_in_rows


@dataclass(frozen=True)
class PopularityPrior:
    """The inverse-popularity prior as a re-ranking scorer (eval.rerank.path "popularity"): log
    p(item) = -log(1 + its training interactions), up to a constant, whatever the history. With
    weight tau a beam's score becomes policy log p - tau log(1 + count): the items the model ranks
    high only for being bought often give way to rarer ones it ranks nearly as high."""

    counts: np.ndarray  # int [ids]: training interactions per item id (indexing.segments.Popularity)

    def candidate_logp(self, histories: Sequence[Sequence[int]] | None, items: np.ndarray) -> np.ndarray:
        """[U, W] log prior of each candidate; -inf in an empty slot (-1)."""
        named = items >= 0
        return np.where(named, -np.log1p(self.counts[np.where(named, items, 0)]), -np.inf)


def rerank_order(items: np.ndarray, policy_logp: np.ndarray, teacher_logp: np.ndarray, weight: float,
                 depth: int) -> np.ndarray:
    """[U, depth] the columns of `items` [U, W] best first after re-scoring, -1 past a row's
    candidates; ties keep the beam's order."""
    named = items >= 0
    teacher = np.where(named, teacher_logp, 0.0)  # an empty slot's -inf times weight 0 would be NaN
    score = np.where(named, teacher if np.isinf(weight) else policy_logp + weight * teacher, -np.inf)
    order = np.argsort(-score, axis=1, kind="stable")[:, :depth]
    return np.where(np.take_along_axis(items, order, 1) >= 0, order, -1)


def rerank(items: np.ndarray, policy_logp: np.ndarray, teacher_logp: np.ndarray, targets: np.ndarray,
           weight: float) -> np.ndarray:
    """0-based rank of each target after re-scoring its beam [U, W], -1 when the beam lacks it."""
    order = rerank_order(items, policy_logp, teacher_logp, weight, items.shape[1])
    ranked = np.where(order >= 0, np.take_along_axis(items, order.clip(min=0), 1), -1)
    return ranks_in_rows(ranked, targets)
