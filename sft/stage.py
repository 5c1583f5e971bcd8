"""`gream sft SPEC`: the SFT stage's entry, on one process or as Ray rank actors."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from cluster.spec import JobSpec
from sft.epoch_checkpoints import open_checkpoints
from sft.reasoning_data import build_reasoning_data
from sft.tasks import ReasoningRecord
from sft.trainer import Trainer


def run(spec: JobSpec, reasoning: Sequence[ReasoningRecord] | None = None, preferences: dict[int, str] | None = None,
        resume: bool = False, force: bool = False) -> Path:
    """Train the SFT stage; returns the saved Hugging Face folder. Without `reasoning` records given,
    the teacher writes them when `sft.reasoning.enabled` (cached, so a re-run asks nothing). With
    `cluster.sft.num_ranks` > 1 the ranks start as Ray actors, unless a launcher (torchrun,
    deepspeed) already made this process one rank of a larger group. `resume`: go on from the latest
    complete epoch checkpoint; `force`: although the spec's checkpoint sections changed since."""
    # Fenced before the teacher, Ray or DeepSpeed start, so that a refused run costs nothing; the
    # folder is rank 0's alone (a launcher's other ranks get theirs from it).
    ckpts = open_checkpoints(spec, resume, force) if int(os.environ.get("RANK", "0")) == 0 else None
    if reasoning is None:
        reasoning = build_reasoning_data(spec)
    if spec.cluster.sft.num_ranks > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        from sft.distributed import train_on_ray

        return train_on_ray(spec, reasoning, preferences, ckpts)
    return Trainer(spec, reasoning, preferences, ckpts).train()
