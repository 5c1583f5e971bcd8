"""Top-K ranking metrics for next-item prediction with one target per example.

Pure functions shared by the SASRec baseline and the generative evaluation: Recall@K is 1 when the
target is among the first K candidates; NDCG@K with a single relevant item is 1 / log2(rank + 2)
for a 0-based rank below K, else 0 (the ideal DCG is 1). NDCG@1 equals Recall@1 and is not reported.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np

MISSING = -1  # rank of a target that is not in the candidate list


def rank_of(ranked: Sequence[int], target: int) -> int:
    """0-based position of the target in a ranked candidate list, or MISSING."""
    for pos, item in enumerate(ranked):
        if item == target:
            return pos
    return MISSING


def ranks_in_rows(items: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """`rank_of` for each row of `items` [U, W] (candidates best first) and its target [U]."""
    hit = items == np.asarray(targets)[:, None]
    return np.where(hit.any(1), hit.argmax(1), MISSING)


def recall_at_k(rank: int, k: int) -> float:
    return 1.0 if 0 <= rank < k else 0.0


def ndcg_at_k(rank: int, k: int) -> float:
    return 1.0 / math.log2(rank + 2) if 0 <= rank < k else 0.0


def metric_names(ks: Iterable[int]) -> list[str]:
    ks = sorted(set(ks))
    return [f"recall@{k}" for k in ks] + [f"ndcg@{k}" for k in ks if k > 1]


def selection_metric(ks: Iterable[int]) -> str:
    """The metric that picks a model on validation (SASRec's early stopping, SFT's best epoch):
    NDCG at the largest cut-off (NDCG@10 by default), Recall@1 when that cut-off is 1."""
    k = max(ks)
    return f"ndcg@{k}" if k > 1 else "recall@1"


def per_example_metrics(ranks: Sequence[int] | np.ndarray, ks: Iterable[int]) -> dict[str, np.ndarray]:
    """Recall@K / NDCG@K of every example from 0-based target ranks (MISSING = not retrieved): the
    values whose means are the reported figures, and what a paired comparison resamples."""
    ranks = np.asarray(ranks, dtype=np.int64)
    if ranks.size == 0:
        raise ValueError("no examples to score")
    ks = sorted(set(ks))
    if not ks or ks[0] < 1:
        raise ValueError(f"cut-offs must be positive integers, got {ks}")
    found = ranks >= 0
    gains = np.where(found, 1.0 / np.log2(np.maximum(ranks, 0) + 2), 0.0)
    out = {f"recall@{k}": (found & (ranks < k)).astype(np.float64) for k in ks}
    out.update({f"ndcg@{k}": np.where(found & (ranks < k), gains, 0.0) for k in ks if k > 1})
    return out


def metrics_from_ranks(ranks: Sequence[int] | np.ndarray, ks: Iterable[int]) -> dict[str, float]:
    """Mean Recall@K / NDCG@K over examples from 0-based target ranks (MISSING = not retrieved)."""
    return {name: float(np.mean(values)) for name, values in per_example_metrics(ranks, ks).items()}


def segment_metrics(ranks: np.ndarray, segments: Mapping[str, np.ndarray], ks: Iterable[int]) -> dict[str, dict]:
    """Recall@K / NDCG@K of each segment's examples (boolean masks over `ranks`) with their count;
    a segment without examples is left out."""
    return {name: {**metrics_from_ranks(ranks[mask], ks), "users": int(mask.sum())}
            for name, mask in segments.items() if mask.any()}


def segment_report(splits: Mapping, ks: Iterable[int]) -> dict[str, dict]:
    """eval.json's "segments": per split (cluster.eval_record SplitRanks with labels), segment_metrics."""
    return {name: segment_metrics(r.ranks, r.segments, ks) for name, r in splits.items() if r.segments}


def ranking_metrics(ranked_lists: Sequence[Sequence[int]], targets: Sequence[int], ks: Iterable[int]) -> dict[str, float]:
    """Mean Recall@K / NDCG@K from each example's ranked candidates (best first) and its target."""
    if len(ranked_lists) != len(targets):
        raise ValueError(f"{len(ranked_lists)} ranked lists for {len(targets)} targets")
    return metrics_from_ranks([rank_of(r, t) for r, t in zip(ranked_lists, targets)], ks)
