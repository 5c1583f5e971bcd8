"""The dedup level: one extra level holding an item's ordinal inside its collision group.

Residual k-means (and some published index files) give several items the same code tuple. Appending
the ordinal of the item among the items sharing its tuple, in item order, makes item <-> SID 1:1
while keeping semantically close items under one prefix (DESIGN.md section 2).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


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
