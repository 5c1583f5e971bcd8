"""Beyond-accuracy metrics of each user's top-K list: what a recommender shows besides whether the
target is in it. Pure numpy over lists [users, K] of item ids (EMPTY: a slot left empty by a model
that ranked fewer than K items), so the generative evaluation, SASRec, RL's in-run validation and
`gream compare` compute them alike.

- coverage@K (set level): distinct items over all the lists / items in the catalogue;
- tail_share@K: share of a list's items outside the head (indexing.segments: the 20% of the items
  seen in training that were bought most);
- distinct_codes@K: distinct first-level SID codes in a list (diversity over the index's coarsest
  clusters);
- ild@K: mean pairwise cosine distance (1 - cos) of the list's items' text embeddings (those the
  index stage clusters), diversity by content;
- novelty@K: mean self-information of the list's items in bits, -log2 of their add-one share of
  the training interactions (Zhou et al. 2010's novelty).

A list without any item scores 0 on each per-user metric.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from indexing.dataset import Example
from indexing.segments import Popularity
from indexing.sid import SidIndex

EMPTY = -1
USER_CHUNK = 1024  # users per pairwise-distance block: [chunk, K, K] similarities at a time


@dataclass(frozen=True)
class Catalogue:
    """What the metrics know of each item id: arrays indexed by item id."""

    items: int  # items in the catalogue: coverage's denominator
    head: np.ndarray  # bool [ids]
    information: np.ndarray  # float64 [ids], self-information in bits
    first_code: np.ndarray | None = None  # int64 [ids], EMPTY for an id without a SID; None: no index
    embeddings: np.ndarray | None = None  # float [ids, dim] unit rows; None: no text embeddings

    @classmethod
    def build(cls, train: Sequence[Example], items: int, index: SidIndex | None = None,
              embeddings: np.ndarray | None = None) -> "Catalogue":
        """`items`: the catalogue's size (ids below it); `index`: for the first-level codes;
        `embeddings`: unit text embeddings, row i for item i."""
        ids = np.asarray(index.items() if index is not None else [], dtype=np.int64)
        pop = Popularity.from_train(train, max(items, int(ids.max(initial=-1)) + 1))
        first = None
        if index is not None:
            first = np.full(len(pop.counts), EMPTY, dtype=np.int64)
            first[ids] = index.as_array()[:, 0]
        return cls(items, pop.head, pop.self_information(), first, embeddings)

    def names(self, k: int) -> list[str]:
        """The metrics this catalogue gives at cut-off k, per-user ones first."""
        return [f"tail_share@{k}", f"novelty@{k}", *([f"distinct_codes@{k}"] if self.first_code is not None else []),
                *([f"ild@{k}"] if self.embeddings is not None else []), f"coverage@{k}"]


def _lookup(table: np.ndarray, lists: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`table`'s entries for each slot of `lists`, and which slots hold an item."""
    lists = np.asarray(lists, dtype=np.int64)
    filled = lists != EMPTY
    return table[np.where(filled, lists, 0)], filled


def _mean_over_items(values: np.ndarray, filled: np.ndarray) -> np.ndarray:
    n = filled.sum(1)
    return np.divide(np.where(filled, values, 0.0).sum(1), n, out=np.zeros(len(n)), where=n > 0)


def coverage(lists: np.ndarray, items: int) -> float:
    lists = np.asarray(lists)
    return len(np.unique(lists[lists != EMPTY])) / items


def tail_share(lists: np.ndarray, head: np.ndarray) -> np.ndarray:
    is_head, filled = _lookup(head, lists)
    return _mean_over_items(~is_head, filled)


def novelty(lists: np.ndarray, information: np.ndarray) -> np.ndarray:
    return _mean_over_items(*_lookup(information, lists))


def distinct_codes(lists: np.ndarray, first_code: np.ndarray) -> np.ndarray:
    codes, filled = _lookup(first_code, lists)
    codes = np.sort(np.where(filled, codes, EMPTY), axis=1)
    real = codes != EMPTY
    return (real[:, :1].sum(1) + (real[:, 1:] & (codes[:, 1:] != codes[:, :-1])).sum(1)).astype(np.float64)


def intra_list_distance(lists: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    lists = np.asarray(lists, dtype=np.int64)
    out = np.zeros(len(lists))
    others = ~np.eye(lists.shape[1], dtype=bool)
    for start in range(0, len(lists), USER_CHUNK):
        vectors, filled = _lookup(embeddings, lists[start:start + USER_CHUNK])
        vectors = vectors.astype(np.float64)
        pairs = filled[:, :, None] & filled[:, None, :] & others
        distance = 1.0 - np.einsum("ukd,uvd->ukv", vectors, vectors)
        n = pairs.sum((1, 2))
        out[start:start + len(n)] = np.divide(np.where(pairs, distance, 0.0).sum((1, 2)), n,
                                              out=np.zeros(len(n)), where=n > 0)
    return out


def per_user(lists: np.ndarray, cat: Catalogue, k: int) -> dict[str, np.ndarray]:
    """Each user's value of every per-user metric of the catalogue, on the first k of each list."""
    top = np.asarray(lists, dtype=np.int64)[:, :k]
    out = {f"tail_share@{k}": tail_share(top, cat.head), f"novelty@{k}": novelty(top, cat.information)}
    if cat.first_code is not None:
        out[f"distinct_codes@{k}"] = distinct_codes(top, cat.first_code)
    if cat.embeddings is not None:
        out[f"ild@{k}"] = intra_list_distance(top, cat.embeddings)
    return out


def summary(values: Mapping[str, np.ndarray], lists: np.ndarray, items: int, k: int) -> dict[str, float]:
    """The figures eval.json reports: the mean of each per-user metric and coverage@k."""
    return {**{name: float(v.mean()) for name, v in values.items()},
            f"coverage@{k}": coverage(np.asarray(lists)[:, :k], items)}


def list_metrics(lists: np.ndarray, cat: Catalogue, k: int) -> dict[str, float]:
    return summary(per_user(lists, cat, k), lists, cat.items, k)
