"""Group-relative advantage estimators (DESIGN.md section 5).

Every function takes rewards shaped [P, G] (P prompt groups of G completions) and returns
advantages of the same shape, one scalar per completion; the learner broadcasts it to the tokens.
The standard deviation is the unbiased sample one (torch.std, as verl and TRL use), and eps = 1e-6
keeps a zero-variance group (which dynamic sampling normally drops) at advantage 0.
"""
from __future__ import annotations

from math import comb
from typing import Literal

import numpy as np

Estimator = Literal["srpo", "grpo", "dr_grpo", "pairwise"]
EPS = 1e-6


def _check_groups(rewards: np.ndarray) -> np.ndarray:
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be [groups, G >= 2], got shape {rewards.shape}")
    return rewards


def dr_grpo(rewards: np.ndarray) -> np.ndarray:
    """Dr. GRPO: r_i - mean(r), no std division (removes the difficulty bias of GRPO)."""
    rewards = _check_groups(rewards)
    return rewards - rewards.mean(axis=1, keepdims=True)


def grpo(rewards: np.ndarray, eps: float = EPS) -> np.ndarray:
    """GRPO: (r_i - mean(r)) / (std(r) + eps)."""
    rewards = _check_groups(rewards)
    return dr_grpo(rewards) / (rewards.std(axis=1, ddof=1, keepdims=True) + eps)


def passk_bonus_table(n: int, k: int, eps: float = EPS) -> tuple[np.ndarray, np.ndarray]:
    """Pass@k calibration bonus for a group of n completions, indexed by the hit count c = 0..n.

    Returns (hit_bonus[c], miss_bonus[c]):
      rho = 1 - C(n-c, k) / C(n, k)                          (pass@k of the group)
      sigma = sqrt(rho (1 - rho))
      hit:  (1 - rho) / (sigma + eps)
      miss: (1 - rho - C(n-c-1, k-1) / C(n-1, k-1)) / (sigma + eps)
    Both are exactly 0 at c = 0 and c = n.
    """
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= group size; got k={k}, group size {n}")
    c = np.arange(n + 1)
    rho = 1.0 - np.array([comb(n - ci, k) for ci in c], dtype=np.float64) / comb(n, k)
    sigma = np.sqrt(rho * (1.0 - rho))
    # C(n-c-1, k-1) is the number of k-subsets holding a given miss and no hit; undefined (0) at c = n.
    miss_share = np.array([comb(n - ci - 1, k - 1) if ci < n else 0 for ci in c], dtype=np.float64) / comb(n - 1, k - 1)
    hit = (1.0 - rho) / (sigma + eps)
    miss = (1.0 - rho - miss_share) / (sigma + eps)
    return hit, miss


def srpo(rewards: np.ndarray, hits: np.ndarray, k: int = 4, eps: float = EPS) -> np.ndarray:
    """SRPO: standardized residual reward plus the pass@k bonus from the exact hits.

    rewards: residual rewards [P, G]; hits: exact hits [P, G] (bool or 0/1).
    """
    rewards = _check_groups(rewards)
    hits = np.asarray(hits).astype(bool)
    if hits.shape != rewards.shape:
        raise ValueError(f"hits have shape {hits.shape}, rewards {rewards.shape}; they must match")
    hit_bonus, miss_bonus = passk_bonus_table(rewards.shape[1], k, eps)
    c = hits.sum(axis=1, keepdims=True)
    bonus = np.where(hits, hit_bonus[c], miss_bonus[c])
    return grpo(rewards, eps) + bonus


def pairwise(rewards: np.ndarray, logprobs: np.ndarray) -> np.ndarray:
    """ReCast's contrast (arXiv 2604.22169): +1 for the top positive, -1 for the hardest negative, 0
    for the rest of the group. The top positive has the group's highest reward (ties: the one the
    policy gives the lowest sequence log-probability, which most needs the push); the hardest
    negative is, among the completions below that reward, the one the policy ranks highest. A flat
    group gets 0. `logprobs` [P, G]: the policy's sequence log-probabilities; NaN (a row no engine
    sampled, e.g. an injected target) counts as the lowest."""
    rewards = _check_groups(rewards)
    logprobs = np.nan_to_num(np.asarray(logprobs, dtype=np.float64), nan=-np.inf)
    if logprobs.shape != rewards.shape:
        raise ValueError(f"logprobs have shape {logprobs.shape}, rewards {rewards.shape}; they must match")
    out = np.zeros_like(rewards)
    rows = np.arange(len(rewards))
    best = rewards.max(axis=1, keepdims=True)
    top = np.where(rewards == best, -logprobs, -np.inf).argmax(axis=1)
    below = rewards < best
    hardest = np.where(below, logprobs, -np.inf).argmax(axis=1)
    informative = below.any(axis=1)
    out[rows[informative], top[informative]] = 1.0
    out[rows[informative], hardest[informative]] = -1.0
    return out


def compute(estimator: Estimator, rewards: np.ndarray, hits: np.ndarray | None = None, k: int = 4,
            logprobs: np.ndarray | None = None) -> np.ndarray:
    """Dispatch on the spec's `rl.advantage`."""
    if estimator == "srpo":
        if hits is None:
            raise ValueError("the srpo estimator needs the exact hits")
        return srpo(rewards, hits, k)
    if estimator == "grpo":
        return grpo(rewards)
    if estimator == "dr_grpo":
        return dr_grpo(rewards)
    if estimator == "pairwise":
        if logprobs is None:
            raise ValueError("the pairwise estimator needs the policy's sequence log-probabilities")
        return pairwise(rewards, logprobs)
    raise ValueError(f"unknown advantage estimator {estimator!r}; expected srpo, grpo, dr_grpo or pairwise")
