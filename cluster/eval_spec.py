"""The job spec's `eval` section: how `gream eval` (and serving, and RL's in-run validation) ranks."""
from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, field_validator, model_validator

from cluster.cluster_spec import Section as _Section
from cluster.rerank_spec import RerankSpec

# DESIGN.md section 6; rl_system/answer_modes.py answers in each, for `gream eval` and `gream serve`.
AnswerMode = Literal["direct", "reasoning", "think_ahead"]
ANSWER_MODES: tuple[str, ...] = get_args(AnswerMode)


class EvalSpec(_Section):
    ks: list[int] = [1, 5, 10]
    beam_width: int = Field(10, ge=1)
    max_users: int | None = Field(None, ge=1)
    pass_samples: int = Field(10, ge=1)
    # Pass@K on a seeded sample of this many users per split (None = every user): it costs
    # pass_samples full completions per user, a reasoning one being a whole thought.
    pass_users: int | None = Field(None, ge=1)
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(0.9, gt=0, le=1)
    # Direct is always among them: its figures and ranks.json are what compare, the dashboard and the
    # benchmarks read; the others go to eval.json's "modes" and ranks-<mode>.json.
    modes: list[AnswerMode] = ["direct"]
    # think_ahead: SID tokens the reasoning pass fixes offline (< the SID depth, checked at eval start).
    think_ahead_tokens: int = Field(1, ge=1)
    # Who runs the beams and the direct-mode sampling of gream eval, gream serve and RL's in-run
    # validation: auto = torch on a CPU, vLLM on an accelerator (cluster.device.eval_backend). Both
    # rank alike; reasoning thoughts are always vLLM's.
    backend: Literal["auto", "torch", "vllm"] = "auto"
    rerank: RerankSpec = RerankSpec()  # generate, then re-rank by a SASRec (cluster/rerank_spec.py)

    @model_validator(mode="after")
    def _beam_covers_k(self) -> "EvalSpec":
        if self.beam_width < max(self.ks):
            raise ValueError(f"beam_width ({self.beam_width}) must be >= max(ks) ({max(self.ks)})")
        if self.rerank.path is not None and self.rerank.width < self.beam_width:
            raise ValueError(f"rerank.width ({self.rerank.width}) must be >= beam_width ({self.beam_width}), "
                             "the candidates kept after re-ranking")
        return self

    @field_validator("modes")
    @classmethod
    def _direct_and_distinct(cls, modes: list[str]) -> list[str]:
        if "direct" not in modes or len(set(modes)) != len(modes):
            raise ValueError("expected distinct modes including 'direct' (its figures stay eval.json's top level)")
        return modes
