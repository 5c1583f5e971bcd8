"""Residual k-means on faiss: H levels of N centres, each level clustering what the previous left.

Level 1 clusters the embeddings; level l clusters the residuals x - (chosen centres so far). Items
that share a prefix are close in embedding space, which is what gives partial-match rewards their
meaning. Plain k-means leaves many codes unused and piles items into a few cells; the balanced mode
assigns under a capacity of ceil(n / N) items per centre (size-constrained assignment), which keeps
code usage high on every level and collisions low.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import faiss
import numpy as np
from tqdm import tqdm

from cluster.errors import GreamError

log = logging.getLogger(__name__)

# Below this many items per centre a level's cells hold one or two items: the prefix carries no
# semantics and residual levels have nothing left to refine.
MIN_ITEMS_PER_CODE = 4


class KMeansError(GreamError, ValueError):
    """Settings that cannot cluster this catalog."""


@dataclass
class ResidualKMeans:
    codes: np.ndarray  # int64 [n, levels]
    centroids: list[np.ndarray]  # per level, float32 [n_codes, dim]
    usage: list[float]  # share of the codes used, per level
    residual_mse: list[float]  # mean squared norm of the residual after each level


def check_codes(n_items: int, n_codes: int, key: str = "index.codes", items: str = "items") -> None:
    """KMeansError naming `key` when `n_items` (described as `items`) are too few for `n_codes` centres."""
    if n_items < MIN_ITEMS_PER_CODE * n_codes:
        fit = n_items // MIN_ITEMS_PER_CODE
        pow2 = 1 << (fit.bit_length() - 1) if fit >= 2 else 0
        hint = f"{key} <= {fit} (e.g. {pow2})" if pow2 else "fewer levels or a larger catalog"
        raise KMeansError(
            f"{key}={n_codes} is too large for {n_items} {items}: each centre needs at least "
            f"{MIN_ITEMS_PER_CODE} items on average; use {hint}")


def squared_distances(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """[n, k] squared L2 distances, exact via faiss (all centres are neighbours)."""
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(centroids)
    dist, ids = index.search(x, centroids.shape[0])
    out = np.empty_like(dist)
    np.put_along_axis(out, ids, dist, axis=1)
    return out


def balanced_assign(dist: np.ndarray, capacity: int) -> np.ndarray:
    """Assign every row to a column, at most `capacity` rows per column, preferring near columns.

    Rounds of proposals: each unassigned row proposes to its nearest column that still has room;
    a column keeps its closest proposers up to its remaining room and is full from then on. Each
    round fills a column or assigns every proposer, so it ends within n_columns + 1 rounds.
    """
    n, k = dist.shape
    if capacity * k < n:
        raise KMeansError(f"capacity {capacity} x {k} centres cannot hold {n} items")
    assign = np.full(n, -1, dtype=np.int64)
    room = np.full(k, capacity, dtype=np.int64)
    todo = np.arange(n)
    while todo.size:
        d = dist[todo]
        d[:, room == 0] = np.inf
        choice = d.argmin(axis=1)
        best = d[np.arange(todo.size), choice]
        order = np.lexsort((todo, best, choice))  # by column, then distance, then row (ties: stable)
        sorted_choice = choice[order]
        starts = np.searchsorted(sorted_choice, sorted_choice, side="left")
        rank = np.arange(order.size) - starts
        accepted = order[rank < room[sorted_choice]]
        assign[todo[accepted]] = choice[accepted]
        room -= np.bincount(choice[accepted], minlength=k)
        todo = todo[assign[todo] < 0]
    return assign


def residual_kmeans(x: np.ndarray, levels: int, n_codes: int, seed: int = 0, iters: int = 25,
                    balanced: bool = True) -> ResidualKMeans:
    """Codes [n, levels] for the rows of `x` (float32 [n, dim])."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, dim = x.shape
    check_codes(n, n_codes)
    residual = x.copy()
    codes = np.empty((n, levels), dtype=np.int64)
    centroids, usage, mse = [], [], []
    for level in tqdm(range(levels), desc="k-means", unit="level"):
        km = faiss.Kmeans(dim, n_codes, niter=iters, seed=seed + level, verbose=False,
                          min_points_per_centroid=1, max_points_per_centroid=n)  # all points, no warning
        km.train(residual)
        centres = km.centroids.copy()
        dist = squared_distances(residual, centres)
        if balanced:
            assign = balanced_assign(dist, math.ceil(n / n_codes))
            # Centres move to the mean of what they actually hold, so residuals stay centred.
            sums = np.zeros_like(centres)
            np.add.at(sums, assign, residual)
            counts = np.bincount(assign, minlength=n_codes)
            held = counts > 0
            centres[held] = sums[held] / counts[held, None]
        else:
            assign = dist.argmin(axis=1)
        residual -= centres[assign]
        codes[:, level] = assign
        centroids.append(centres)
        usage.append(float(np.unique(assign).size / n_codes))
        mse.append(float((residual ** 2).sum(axis=1).mean()))
        log.info("level %d: %.1f%% of %d codes used, residual mse %.4f", level + 1, 100 * usage[-1], n_codes, mse[-1])
    return ResidualKMeans(codes, centroids, usage, mse)


def level_distances(x: np.ndarray, km: ResidualKMeans, level: int) -> np.ndarray:
    """[n, codes] squared distances from each row's residual before `level` (what that level
    clustered) to the level's centres."""
    residual = np.ascontiguousarray(x, dtype=np.float32).copy()
    for before, centres in enumerate(km.centroids[:level]):
        residual -= centres[km.codes[:, before]]
    return squared_distances(residual, km.centroids[level])


def last_level_distances(x: np.ndarray, km: ResidualKMeans) -> np.ndarray:
    return level_distances(x, km, len(km.centroids) - 1)
