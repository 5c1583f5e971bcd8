"""The job spec's `rl.objectives`: rewards beyond accuracy, each added to the rule reward (`rl.reward`,
with the teacher's and the ranking term) times its weight; 0 turns it off. The reward service knows
each item's training popularity; rl_system/reward/objectives.py holds the reward functions.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from cluster.cluster_spec import Section as _Section


class ObjectivesSpec(_Section):
    # A hit, or a near hit (at least `near_levels` leading SID levels matched), naming an unpopular
    # item earns its novelty (self-information over the catalogue's highest, in (0, 1]; `tail_form:
    # tail`: 1 for a tail item, else 0) times the share of SID levels matched (1 for a hit).
    tail: float = Field(0.0, ge=0)
    tail_form: Literal["novelty", "tail"] = "novelty"
    near_levels: int = Field(1, ge=1)
    # Every completion naming an item earns that item's novelty, hit or not (SMORL's novelty reward).
    # Unlike `tail`, whose bonus rides on a group's hits and so mostly scales rewards that the group's
    # normalisation then divides out, this differs between any two completions naming items of
    # different popularity: it moves the sampled mass towards rarer items, at some cost in accuracy.
    novelty: float = Field(0.0, ge=0)
    # A completion earns its share of its group's distinct SID prefixes of `diversity_levels` levels:
    # 1 for a prefix no other completion of the group names, 1/m for one that m of them name, so a
    # group's rewards add up to its number of distinct prefixes.
    diversity: float = Field(0.0, ge=0)
    diversity_levels: int = Field(1, ge=1)
    # A miss naming a head item that the step's completions name more often than the item's share of
    # the training interactions loses the excess share of its exposure, 1 - training share / exposure.
    head_exposure: float = Field(0.0, ge=0)

    @property
    def needs_popularity(self) -> bool:
        return bool(self.tail or self.novelty or self.head_exposure)

    def level_problem(self, depth: int) -> str | None:
        """What is wrong with the level settings for SIDs of `depth` levels, naming the key; None if nothing."""
        for key, levels in (("near_levels", self.near_levels), ("diversity_levels", self.diversity_levels)):
            if levels > depth:
                return f"key 'rl.objectives.{key}': {levels} levels, but the index's SIDs have {depth}"
        return None
