"""The job spec's `sft.lora`: train LoRA adapters (and the new SID rows) instead of every weight."""
from __future__ import annotations

from pydantic import Field

from cluster.cluster_spec import Section as _Section


class LoraSpec(_Section):
    enabled: bool = False
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]
