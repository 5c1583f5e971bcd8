"""Paired comparison of two models on the same users: pure numpy, no torch.

Examples are matched by (user, n-th example of that user in the split), so a leave-one-out split
pairs user with user and a temporal split, where a user owns several examples, pairs them in order.
The interval is a percentile bootstrap that resamples users (all of a user's examples together)
with replacement: the resampled difference is the sum of the resampled users' differences over
their number of examples, which for one example per user is the plain mean.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
SEED = 0
LEVEL = 0.95
CHUNK_ELEMENTS = 4_000_000  # resamples x users x metrics drawn at once: bounded memory


@dataclass(frozen=True)
class Interval:
    diff: float  # mean difference over the paired examples
    low: float
    high: float

    @property
    def verdict(self) -> str:
        """"no difference" when the interval holds 0, else the sign of the difference."""
        if self.low <= 0.0 <= self.high:
            return "no difference"
        return "higher" if self.diff > 0 else "lower"


def example_keys(users: np.ndarray) -> list[tuple[int, int]]:
    """(user, how many earlier examples that user has in the list) for each example."""
    seen: dict[int, int] = {}
    keys = []
    for user in users.tolist():
        keys.append((user, seen.get(user, 0)))
        seen[user] = seen.get(user, 0) + 1
    return keys


def align(first: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """For the examples every list holds, their positions in each list, in the first list's order."""
    where = [{key: i for i, key in enumerate(example_keys(users))} for users in others]
    rows = [(i, *(w[key] for w in where)) for i, key in enumerate(example_keys(first))
            if all(key in w for w in where)]
    table = np.array(rows, dtype=np.int64).reshape(len(rows), 1 + len(others))
    return tuple(table.T)


def paired_bootstrap(diff: np.ndarray, users: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED,
                     level: float = LEVEL) -> list[Interval]:
    """Percentile-bootstrap interval of the mean of each column of `diff` [examples, metrics] (a 1-d
    array is one metric), resampling the distinct `users` [examples]; one Interval per metric. The
    same resamples serve every metric."""
    diff = np.asarray(diff, dtype=np.float64)
    diff = diff[:, None] if diff.ndim == 1 else diff
    users = np.asarray(users)
    if diff.shape[0] == 0 or diff.shape[0] != users.shape[0]:
        raise ValueError(f"need one user per example and at least one example, got {diff.shape[0]} "
                         f"differences for {users.shape[0]} users")
    if resamples < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"resamples must be >= 1 and level in (0, 1), got {resamples} and {level}")
    _, group = np.unique(users, return_inverse=True)
    sums = np.zeros((group.max() + 1, diff.shape[1]))
    np.add.at(sums, group, diff)
    counts = np.bincount(group).astype(np.float64)
    n = len(counts)
    rng = np.random.default_rng(seed)
    chunk = max(1, CHUNK_ELEMENTS // (n * diff.shape[1]))
    means = []
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        means.append(sums[idx].sum(1) / counts[idx].sum(1)[:, None])
    low, high = np.quantile(np.concatenate(means), [(1 - level) / 2, 1 - (1 - level) / 2], axis=0)
    point = sums.sum(0) / counts.sum()
    return [Interval(float(d), float(lo), float(hi)) for d, lo, hi in zip(point, low, high)]
