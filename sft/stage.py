"""`gream sft SPEC`: the SFT stage's entry, on one process or as Ray rank actors."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from cluster.spec import JobSpec
from sft.reasoning_data import build_reasoning_data
from sft.tasks import ReasoningRecord
from sft.trainer import Trainer


def run(spec: JobSpec, reasoning: Sequence[ReasoningRecord] | None = None, preferences: dict[int, str] | None = None) -> Path:
    """Train the SFT stage; returns the saved Hugging Face folder. Without `reasoning` records given,
    the teacher writes them when `sft.reasoning.enabled` (cached, so a re-run asks nothing). With
    `cluster.sft.num_ranks` > 1 the ranks start as Ray actors, unless a launcher (torchrun,
    deepspeed) already made this process one rank of a larger group."""
    if reasoning is None:
        reasoning = build_reasoning_data(spec)
    if spec.cluster.sft.num_ranks > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        from sft.distributed import train_on_ray

        return train_on_ray(spec, reasoning, preferences)
    return Trainer(spec, reasoning, preferences).train()
