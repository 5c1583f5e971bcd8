"""The job spec's `logging` and `checkpoint`: how a run records itself, and which of its
checkpoints it keeps and exports."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from cluster.cluster_spec import Section as _Section


class LoggingSpec(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    tensorboard: bool = True
    wandb_project: str | None = None


class CheckpointSpec(_Section):
    every: int = Field(10, ge=1)  # RL steps between checkpoints (SFT writes one after every epoch)
    keep: int = Field(2, ge=1)  # the last `keep` checkpoints stay, RL's and SFT's
    # Besides the last `keep`, the checkpoint with the best value of this per-step RL metric (its
    # mean over the steps since the previous checkpoint) is kept and named in checkpoints/best.json.
    # None: `val/ndcg@10` when rl.eval_every is set, else `reward/mean`.
    best_metric: str | None = None
    best_mode: Literal["max", "min"] = "max"
    # What rl/model is: with in-run validation, `best` exports that best checkpoint, as SFT and the
    # SASRec are early-stopped; `last` exports the last step's weights, for objectives that trade
    # accuracy on purpose (a tail reward), where picking by accuracy would undo the objective.
    select: Literal["best", "last"] = "best"
