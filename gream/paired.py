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


def coverage_bootstrap(top_a: np.ndarray, top_b: np.ndarray, users: np.ndarray, items: int,
                       resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL) -> Interval:
    """Interval of coverage(B) - coverage(A): the distinct items of all the top lists [examples, K]
    (paired rows; -1 an empty slot) over the catalogue's `items`, resampling the distinct `users` as
    paired_bootstrap does. Coverage is a figure of the whole set of lists, and a resample holds only
    about 63% of the users (the rest drawn twice or more), so every resampled difference runs short
    of the full sample's; the percentiles are shifted by that bias (the resamples' mean minus the
    full-sample difference)."""
    users = np.asarray(users)
    if len(users) == 0 or not len(top_a) == len(top_b) == len(users):
        raise ValueError(f"need one user per pair of lists and at least one pair, got {len(top_a)} and "
                         f"{len(top_b)} lists for {len(users)} users")
    if resamples < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"resamples must be >= 1 and level in (0, 1), got {resamples} and {level}")
    _, group = np.unique(users, return_inverse=True)
    n = group.max() + 1
    stages = []
    for top in (np.asarray(top_a), np.asarray(top_b)):
        filled = top >= 0
        owner = np.broadcast_to(group[:, None], top.shape)[filled]  # the user of each listed item
        _, item = np.unique(top[filled], return_inverse=True)
        stages.append((owner, item, int(item.max(initial=-1)) + 1))
    rng = np.random.default_rng(seed)
    chunk = max(1, CHUNK_ELEMENTS // max(n, *(len(owner) for owner, _, _ in stages)))
    diffs = []
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        drawn = np.zeros((size, n), dtype=bool)
        drawn[np.arange(size)[:, None], rng.integers(0, n, size=(size, n))] = True
        covered = []
        for owner, item, distinct in stages:
            rows, pairs = np.nonzero(drawn[:, owner])
            seen = np.zeros((size, distinct), dtype=bool)
            seen[rows, item[pairs]] = True
            covered.append(seen.sum(1) / items)
        diffs.append(covered[1] - covered[0])
    diffs = np.concatenate(diffs)
    point = (stages[1][2] - stages[0][2]) / items
    low, high = np.quantile(diffs, [(1 - level) / 2, 1 - (1 - level) / 2]) - (diffs.mean() - point)
    return Interval(float(point), float(low), float(high))
