"""Batch order for mixing alignment and reasoning data (DESIGN.md section 3).

`gream` (GREAM's schedule): in the curriculum epochs (the first two, but never the last), after the
i-th alignment batch one reasoning batch is inserted with probability
p_insert = min(1, gamma * (i / N_align) * (N_reason / N_align)), so reasoning grows in as alignment
settles; later epochs mix all batches uniformly. `uniform`: every epoch is a uniform shuffle of all
batches. `sequential`: every epoch runs all alignment batches, then all reasoning batches.
Without reasoning data every schedule is plain alignment. Pure and seeded.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

ALIGN = "align"
REASON = "reason"
CURRICULUM_EPOCHS = 2
SCHEDULES = ("gream", "uniform", "sequential")


@dataclass(frozen=True)
class Step:
    kind: Literal["align", "reason"]
    batch: int  # index into that kind's batches for this epoch


def p_insert(i: int, n_align: int, n_reason: int, gamma: float) -> float:
    """Probability of a reasoning batch after the i-th (1-based) alignment batch of an epoch."""
    if n_align <= 0:
        raise ValueError(f"n_align must be positive, got {n_align}")
    return min(1.0, gamma * (i / n_align) * (n_reason / n_align))


def is_curriculum_epoch(epoch: int, epochs: int) -> bool:
    """GREAM ramps reasoning in over the first two epochs; the last epoch is always a uniform mix."""
    return epoch < min(CURRICULUM_EPOCHS, epochs - 1)


def _rng(seed: int, epoch: int) -> random.Random:
    return random.Random(f"curriculum:{seed}:{epoch}")


def epoch_plan(schedule: str, epoch: int, epochs: int, n_align: int, n_reason: int, gamma: float = 1.5,
               seed: int = 0) -> list[Step]:
    """The ordered batches of one epoch. Alignment batches appear once each and in order; so do
    reasoning batches, except that `gream` curriculum epochs cycle them as p_insert demands."""
    if schedule not in SCHEDULES:
        raise ValueError(f"sft.curriculum: '{schedule}' is not a schedule; expected one of {SCHEDULES}")
    if not 0 <= epoch < epochs:
        raise ValueError(f"epoch {epoch} outside 0..{epochs - 1}")
    align = [Step(ALIGN, b) for b in range(n_align)]
    reason = [Step(REASON, b) for b in range(n_reason)]
    if n_reason == 0:
        return align
    if schedule == "sequential":
        return align + reason
    rng = _rng(seed, epoch)
    if schedule == "uniform" or not is_curriculum_epoch(epoch, epochs) or n_align == 0:
        # Shuffle which kind comes next; batches of each kind keep their (already shuffled) order.
        kinds = [ALIGN] * n_align + [REASON] * n_reason
        rng.shuffle(kinds)
        queues = {ALIGN: iter(align), REASON: iter(reason)}
        return [next(queues[k]) for k in kinds]
    plan: list[Step] = []
    inserted = 0
    for i in range(1, n_align + 1):
        plan.append(align[i - 1])
        if rng.random() < p_insert(i, n_align, n_reason, gamma):
            # Reasoning batches cycle when the schedule asks for more than there are.
            plan.append(Step(REASON, inserted % n_reason))
            inserted += 1
    return plan
