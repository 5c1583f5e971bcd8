"""Long-tail segments of an evaluation split, as FlexCode and GRASP report them: by the target item's
popularity (head: the 20% most popular items by training interactions; tail: the other 80%) and by
the user's activity (long: more training interactions than the median user; short: the rest).

Both come from the training split only, so every model evaluated on one split gets the same labels.
A user's training interactions are their training targets plus the first item, which is only ever
a history (the history of a user's first training example).
"""
from __future__ import annotations

from collections import Counter
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
