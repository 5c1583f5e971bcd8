"""The job spec's `sft.prefix_loss` section: a prefix-aware loss beside the token loss, after APAO
(arXiv 2603.02730); sft/sid_losses.py holds the math and says which prefixes it scores."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from cluster.cluster_spec import Section as _Section


class PrefixLossSpec(_Section):
    kind: Literal["none", "pointwise", "pairwise"] = "none"
    weight: float = Field(0.1, gt=0)  # APAO's beta: the prefix loss's weight beside the token loss
    negatives: int = Field(4, ge=1)  # sibling prefixes drawn per target prefix
    # Level weights softmax(level loss / temperature) per target: towards 0 only its worst prefix counts.
    temperature: float = Field(1.0, gt=0)


class DistillSpec(_Section):
    """Offline distillation from a trained SASRec (sft/distill.py): each next-item SID token's target
    mixes the one-hot code with the teacher's distribution marginalised onto the trie."""

    # A `gream baseline sasrec` folder (model.safetensors, scorer.json) of this catalogue; None: off.
    # Relative to the working directory, as rl.teacher.path is.
    path: str | None = None
    alpha: float = Field(0.5, ge=0, le=1)  # the teacher's share of each distilled token's target
    temperature: float = Field(1.0, gt=0)  # p_T^(1/T), renormalised, before marginalising
