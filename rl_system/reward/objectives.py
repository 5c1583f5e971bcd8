"""Rewards beyond accuracy (`rl.objectives`, cluster/objectives_spec.py): what RL can optimise that
next-item cross-entropy cannot see, the exposure of the long tail, diversity within a group and the
over-exposure of popular items (SMORL, arXiv 2110.15097; OneRec's mixed reward model).

Pure functions over a scored batch, in the layout of rl_system/reward/functions.py: codes [N, D]
(-1 rows: no SID), item ids (-1: none), and per completion what the reward service knows of its
item's training popularity (`popularity_fields` of the `item_tables` each replica computes once).
Group-relative advantages cancel a reward that is the same for a whole group, so each term here
differs between the completions of one group.
"""
from __future__ import annotations

import numpy as np

from cluster.objectives_spec import ObjectivesSpec
from indexing.segments import Popularity


def item_tables(popularity: Popularity) -> dict[str, np.ndarray]:
    """Per item id, once per replica: `novelty`, the item's self-information over the catalogue's
    highest (in (0, 1]); `tail`, whether it is outside the head; `share`, its share of the training
    interactions."""
    information = popularity.self_information()
    return {"novelty": information / information.max(), "tail": ~popularity.head, "share": popularity.share()}


def popularity_fields(tables: dict[str, np.ndarray], items: np.ndarray) -> dict[str, np.ndarray]:
    """item_tables' entries for each completion's item (-1: it names none, and gets 0 / False)."""
    items = np.asarray(items, dtype=np.int64)
    named = (items >= 0) & (items < len(tables["tail"]))
    at = np.where(named, items, 0)
    return {name: np.where(named, table[at], table.dtype.type(0)) for name, table in tables.items()}


def tail_bonus(exact: np.ndarray, lcp: np.ndarray, value: np.ndarray, depth: int, near_levels: int) -> np.ndarray:
    """`value` (the item's novelty, or 1 for a tail item) of a hit, and of a near hit (at least
    `near_levels` levels matched) times its share of levels matched, lcp / depth; 0 otherwise."""
    lcp = np.asarray(lcp)
    credit = np.where(np.asarray(exact, dtype=bool), 1.0, np.where(lcp >= near_levels, lcp / depth, 0.0))
    return credit * np.asarray(value, dtype=np.float64)


def prefix_diversity(codes: np.ndarray, levels: int) -> np.ndarray:
    """For groups [P, G, D] of code rows: each completion's 1 / (how many of its group share its first
    `levels` codes), 0 for a completion without a SID; a group's total is its distinct prefixes."""
    codes = np.asarray(codes, dtype=np.int64)
    prefix = codes[:, :, :levels]
    same = (prefix[:, :, None, :] == prefix[:, None, :, :]).all(-1)  # [P, G, G]
    named = (prefix >= 0).all(-1)
    return np.where(named, 1.0 / same.sum(-1), 0.0)


def head_exposure_penalty(items: np.ndarray, tail: np.ndarray, share: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Over a batch: a miss naming a head item loses 1 - share / exposure when its exposure (the share
    of the batch's named completions that name it) exceeds its training `share`; 0 otherwise."""
    items = np.asarray(items, dtype=np.int64)
    named = items >= 0
    _, inverse, counts = np.unique(np.where(named, items, -1), return_inverse=True, return_counts=True)
    exposure = np.where(named, counts[inverse.reshape(items.shape)] / max(1, int(named.sum())), 0.0)
    head_miss = named & ~np.asarray(tail, dtype=bool) & ~np.asarray(exact, dtype=bool)
    excess = 1.0 - np.divide(share, exposure, out=np.ones_like(exposure), where=exposure > 0)
    return np.where(head_miss & (excess > 0), -excess, 0.0)


def objective_rewards(spec: ObjectivesSpec, reply, group_size: int) -> np.ndarray:
    """The weighted sum of the objectives the spec turns on, per completion of a flat batch of groups
    of `group_size` (a rl_system.messages.RewardReply; its popularity fields where `needs_popularity`)."""
    out = np.zeros(len(reply.exact))
    if spec.tail:
        value = reply.novelty if spec.tail_form == "novelty" else reply.tail.astype(np.float64)
        out += spec.tail * tail_bonus(reply.exact, reply.lcp, value, reply.codes.shape[1], spec.near_levels)
    if spec.novelty:
        out += spec.novelty * np.asarray(reply.novelty, dtype=np.float64)  # 0 for a completion naming no item
    if spec.diversity:
        groups = reply.codes.reshape(-1, group_size, reply.codes.shape[1])
        out += spec.diversity * prefix_diversity(groups, spec.diversity_levels).ravel()
    if spec.head_exposure:
        out += spec.head_exposure * head_exposure_penalty(reply.item, reply.tail, reply.share, reply.exact)
    return out
