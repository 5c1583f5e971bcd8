"""Making item <-> SID 1:1 when residual k-means (or a published index file) gives several items the
same code tuple.

The dedup level (DESIGN.md section 2): one extra level holding the ordinal of the item among the
items sharing its tuple, in item order, keeping semantically close items under one prefix. Or, for
a k-means index, the colliding items move to free codes of the last level (`reassign_last_level`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from cluster.errors import GreamError


class CollisionError(GreamError, ValueError):
    """Collisions that the chosen rule cannot resolve."""


@dataclass(frozen=True)
class CollisionStats:
    items: int
    unique_sids: int
    collision_rate: float  # 1 - unique / items, the share of items a lookup by SID cannot tell apart
    colliding_items: int  # items whose tuple is shared with at least one other item
    duplicate_groups: int  # tuples shared by more than one item
    largest_group: int

    def as_dict(self) -> dict:
        return asdict(self)


def _groups(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[0] == 0:
        raise ValueError(f"codes must be a non-empty [items, levels] array, got shape {codes.shape}")
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return inverse.reshape(-1), counts


def collision_stats(codes: np.ndarray) -> CollisionStats:
    _, counts = _groups(codes)
    n = int(counts.sum())
    return CollisionStats(
        items=n,
        unique_sids=int(counts.size),
        collision_rate=round(1.0 - counts.size / n, 6),
        colliding_items=int(counts[counts > 1].sum()),
        duplicate_groups=int((counts > 1).sum()),
        largest_group=int(counts.max()),
    )


def dedup_ordinals(codes: np.ndarray) -> np.ndarray:
    """Ordinal of each row among the rows with the same code tuple, counted in row order."""
    inverse, counts = _groups(codes)
    order = np.argsort(inverse, kind="stable")  # rows grouped by tuple, row order kept inside a group
    group_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ordinal = np.empty_like(order)
    ordinal[order] = np.arange(order.size) - group_start[inverse[order]]
    return ordinal


def add_dedup_level(codes: np.ndarray) -> np.ndarray:
    """codes [N, H] -> [N, H + 1] whose rows are all distinct."""
    codes = np.asarray(codes, dtype=np.int64)
    return np.concatenate([codes, dedup_ordinals(codes)[:, None]], axis=1)


def reassign_last_level(codes: np.ndarray, last_dist: np.ndarray) -> np.ndarray:
    """codes [N, H] -> [N, H] whose rows are all distinct, by moving items inside the last level.

    In each group of items sharing a whole tuple the item nearest its last-level centre keeps it;
    each other one, in order of that distance, takes the nearest last-level code that no item with
    the same prefix (first H - 1 codes) holds yet (LC-Rec's fix, greedy instead of Sinkhorn). SIDs
    keep their length, where a dedup level would add a token to every item for a few collisions.
    `last_dist` [N, codes of the last level]: squared distances of each item's residual before the
    last level to that level's centres (inf: a code this item may not take).
    """
    codes = np.array(codes, dtype=np.int64)
    inverse, counts = _groups(codes)
    taken: dict[tuple, set[int]] = {}
    for row in codes:
        taken.setdefault(tuple(row[:-1]), set()).add(int(row[-1]))
    members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])  # rows of each tuple
    for group in np.flatnonzero(counts > 1):
        rows = members[group]
        rows = rows[np.argsort(last_dist[rows, codes[rows[0], -1]], kind="stable")]
        used = taken[tuple(codes[rows[0], :-1])]
        for row in rows[1:]:
            free = np.isfinite(last_dist[row])  # an infinite distance marks a code the item may not take
            free[list(used)] = False
            if not free.any():
                raise CollisionError(f"index.collisions: reassign: prefix {codes[row, :-1].tolist()} holds more items "
                                     f"than the last level has codes ({last_dist.shape[1]}); use collisions: level")
            code = int(np.where(free, last_dist[row], np.inf).argmin())
            codes[row, -1] = code
            used.add(code)
    return codes
