"""The learner's settings, read once from the job spec, and the DeepSpeed config they make."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster import device as device_mod
from cluster.spec import JobSpec


@dataclass(frozen=True)
class LearnerConfig:
    model_path: str
    device: str = "auto"
    lr: float = 2e-5
    zero_stage: int = 2
    offload: bool = False
    micro_batch_size: int = 32
    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.001
    ce_coef: float = 0.0
    pg_coef: float = 1.0
    tis_cap: float | None = None
    temperature: float = 1.0
    grad_clip: float = 1.0
    seed: int = 0
    collective_timeout_s: float = 1800.0  # cluster.learner.collective_timeout_s

    @classmethod
    def from_spec(cls, spec: JobSpec, model_path: str | Path) -> "LearnerConfig":
        rl = spec.rl
        return cls(model_path=str(model_path), device=spec.cluster.device, lr=rl.lr, zero_stage=rl.zero_stage,
                   offload=rl.offload, micro_batch_size=rl.micro_batch_size, clip_low=rl.clip_low,
                   clip_high=rl.clip_high, kl_coef=rl.kl_coef, ce_coef=rl.ce_coef, pg_coef=rl.pg_coef,
                   tis_cap=rl.tis_cap, temperature=rl.temperature,
                   seed=rl.seed, collective_timeout_s=spec.cluster.learner.collective_timeout_s)


def deepspeed_config(cfg: LearnerConfig, placement: device_mod.Placement) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    if cfg.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": placement.is_gpu}
        if cfg.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": placement.is_gpu}
    optimizer_params: dict[str, Any] = {"lr": cfg.lr, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": 1,  # reset per step to the batch's micro-batch count
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": placement.is_gpu},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if not placement.is_gpu:
        # DeepSpeed's fused CPU Adam is a JIT-built op; torch's AdamW needs no compiler.
        optimizer_params["torch_adam"] = True
        config["zero_force_ds_cpu_optimizer"] = False
    config["optimizer"] = {"type": "AdamW", "params": optimizer_params}
    return config
