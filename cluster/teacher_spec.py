"""The job spec's SASRec teachers: `rl.teacher` (the scorer whose judgement joins the RL reward,
behind its gate) and the launch stage `sasrec` that trains one inside a run."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from cluster.cluster_spec import Section as _Section


class TeacherSpec(_Section):
    """A trained scorer whose judgement of each completion's item joins the reward (DESIGN.md
    section 11): the folder of `gream baseline sasrec` (model.safetensors, scorer.json)."""

    path: str
    weight: float = Field(1.0, gt=0)  # added to the rule reward (residual, binary or beam) times this
    # logprob: log p_T(item | history); rank: 1 / log2(catalogue rank + 2); group_softmax: p_T over the group's items
    form: Literal["logprob", "rank", "group_softmax"] = "rank"
    # Which groups get it (rl_system.reward.functions.teacher_gate, AdaGRPO): every group (none), those
    # where the teacher puts the target above every rollout negative (separates), those where no item
    # takes more than `uncertain_share` of the group (uncertain), or both.
    gate: Literal["none", "separates", "uncertain", "both"] = "none"
    uncertain_share: float = Field(0.5, gt=0, le=1)


class SasrecStageSpec(_Section):
    """The launch stage `sasrec`: a SASRec trained and evaluated in this run (`baselines/sasrec`, as
    `gream baseline sasrec` writes it), so that `sft.distill`, `rl.teacher` and `eval.rerank` can
    name it as their teacher in the same `gream launch`."""

    config: str | None = None  # SASRec settings: a JSON object of SasrecConfig fields, or a tune.json
    seed: int = 0
