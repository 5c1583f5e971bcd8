"""Long-tail segments of an evaluation split, as FlexCode and GRASP report them: by the target item's
popularity (head: the 20% most popular items by training interactions; tail: the other 80%) and by
the user's activity (long: more training interactions than the median user; short: the rest).

Both come from the training split only, so every model evaluated on one split gets the same labels.
A user's training interactions are their training targets plus the first item, which is only ever
a history (the history of a user's first training example).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from indexing.dataset import Example

HEAD_SHARE = 0.2
SEGMENTS = ("head", "tail", "short", "long")


def training_items(train: Sequence[Example]) -> dict[int, list[int]]:
    """Each user's training interactions in order: their first example's history, then every target."""
    bought: dict[int, list[int]] = {}
    for ex in train:
        if ex.user not in bought:
            bought[ex.user] = list(ex.history)
        bought[ex.user].append(ex.target)
    return bought


def training_interactions(train: Sequence[Example]) -> tuple[Counter, Counter]:
    """(per item, per user) counts of training interactions."""
    bought = training_items(train)
    items = Counter(item for seq in bought.values() for item in seq)
    return items, Counter({user: len(seq) for user, seq in bought.items()})


def head_items(items: Counter, share: float = HEAD_SHARE) -> set[int]:
    """The round(share x items seen in training) most popular items; ties broken by item id so the
    set is a function of the data alone."""
    ranked = sorted(items, key=lambda i: (-items[i], i))
    return set(ranked[: round(share * len(ranked))])


def segment_masks(examples: Sequence[Example], train: Sequence[Example]) -> dict[str, np.ndarray]:
    """For each evaluated example, whether it falls in each of SEGMENTS. An item never seen in
    training is tail; a user without training interactions is short."""
    items, users = training_interactions(train)
    head = head_items(items)
    median = float(np.median(list(users.values()))) if users else 0.0
    is_head = np.array([ex.target in head for ex in examples], dtype=bool)
    is_long = np.array([users.get(ex.user, 0) > median for ex in examples], dtype=bool)
    return {"head": is_head, "tail": ~is_head, "short": ~is_long, "long": is_long}


@dataclass(frozen=True)
class Popularity:
    """Per item id (arrays of one length covering every id of the catalogue): training interactions
    and head membership, what tail share, novelty and the popularity-aware RL rewards read."""

    counts: np.ndarray  # int64 [ids]
    head: np.ndarray  # bool [ids], head_items of the counts

    @classmethod
    def from_train(cls, train: Sequence[Example], ids: int) -> "Popularity":
        """From the training split; `ids`: at least one more than the largest item id in use."""
        items, _ = training_interactions(train)
        counts = np.zeros(max(ids, max(items, default=-1) + 1), dtype=np.int64)
        counts[list(items)] = list(items.values())
        head = np.zeros(len(counts), dtype=bool)
        head[sorted(head_items(items))] = True
        return cls(counts, head)

    def share(self) -> np.ndarray:
        """Each item's share of the training interactions."""
        return self.counts / max(1, int(self.counts.sum()))

    def self_information(self) -> np.ndarray:
        """-log2 of each item's add-one share of the training interactions, (count + 1) / (interactions
        + ids): the smoothing keeps an item never seen in training finite (the most novel)."""
        return -np.log2((self.counts + 1) / (self.counts.sum() + len(self.counts)))
