"""`gream sft SPEC`: the SFT stage's entry, on one process or as Ray rank actors."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from cluster.spec import JobSpec
from indexing.dataset import load_from_spec
from sft.distill import check_distill
from sft.epoch_checkpoints import open_checkpoints
from sft.tasks import ReasoningRecord
from sft.teach import read_for_sft, require_item_text
from sft.trainer import Trainer


def run(spec: JobSpec, reasoning: Sequence[ReasoningRecord] | None = None, preferences: dict[int, str] | None = None,
        resume: bool = False, force: bool = False) -> Path:
    """Train the SFT stage; returns the saved Hugging Face folder. Without `reasoning` and
    `preferences` given, it reads what `gream teach` wrote for the spec (sft/teach.py; exit 2 naming
    the file when it is missing). With `cluster.sft.num_ranks` > 1 the ranks start as Ray actors,
    unless a launcher (torchrun, deepspeed) already made this process one rank of a larger group.
    `resume`: go on from the latest complete epoch checkpoint; `force`: although the spec's checkpoint
    sections changed since."""
    # Checked and read before the checkpoints are fenced and Ray or DeepSpeed start, so that a refused
    # run costs nothing and leaves nothing behind.
    ds = load_from_spec(spec)
    require_item_text(spec, ds)
    check_distill(spec, ds.num_items)
    if reasoning is None and preferences is None:
        reasoning, preferences = read_for_sft(spec)
    # The folder is rank 0's alone (a launcher's other ranks get theirs from it).
    ckpts = open_checkpoints(spec, resume, force) if int(os.environ.get("RANK", "0")) == 0 else None
    try:
        if spec.cluster.sft.num_ranks > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            from sft.distributed import train_on_ray

            return train_on_ray(spec, reasoning or [], preferences, ckpts)
        return Trainer(spec, reasoning or [], preferences, ckpts).train()
    finally:
        if ckpts is not None:  # the writer lock goes with the run
            ckpts.close()
