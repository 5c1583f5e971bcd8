"""The SFT DeepSpeed engine's set-up: the process group, the config, LoRA and the warm-up freeze."""
from __future__ import annotations

import os

import torch

from cluster.deepspeed_group import join_deepspeed_group
from cluster.device import Placement
from cluster.errors import GreamError
from cluster.lora_spec import LoraSpec
from cluster.ranks import ensure_rank_env
from cluster.spec import SftSpec


class SftError(GreamError):
    """An SFT run that cannot start as specified."""


WARMUP_SHARE = 0.03
MIN_LR_RATIO = 0.1


def init_distributed(placement: Placement, timeout_s: float) -> tuple[int, int]:
    """Join the launcher's group (Ray actors of sft.distributed, torchrun) or a one-rank group of our own;
    `timeout_s`: cluster.sft.collective_timeout_s."""
    own_port = "RANK" not in os.environ
    rank, world = ensure_rank_env()
    join_deepspeed_group(placement, timeout_s, own_port)
    return rank, world


def deepspeed_config(s: SftSpec, dtype: str, placement: Placement, total_steps: int, lr: float, weight_decay: float,
                     zero_stage: int) -> dict:
    if dtype == "float16" and not placement.is_gpu:
        raise SftError("model.dtype: float16 training needs a GPU; use float32 or bfloat16 on CPU")
    return {
        "train_micro_batch_size_per_gpu": s.batch_size,
        "gradient_accumulation_steps": s.grad_accum,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": zero_stage},
        "bf16": {"enabled": dtype == "bfloat16"},
        "fp16": {"enabled": dtype == "float16"},
        # CPU: torch's AdamW instead of DeepSpeed's compiled CPU Adam (no build step needed).
        "optimizer": {"type": "AdamW", "params": {"lr": lr, "betas": [0.9, 0.98], "eps": 1e-8,
                                                  "weight_decay": weight_decay, "torch_adam": not placement.is_gpu}},
        "scheduler": {"type": "WarmupCosineLR", "params": {
            "total_num_steps": max(total_steps, 1), "warmup_num_steps": max(1, int(WARMUP_SHARE * total_steps)),
            "warmup_type": "linear", "warmup_min_ratio": 0.0, "cos_min_ratio": MIN_LR_RATIO}},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def apply_lora(model, lora: LoraSpec, new_token_ids: list[int]):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
                     task_type="CAUSAL_LM",
                     # The new SID rows must learn too; only those rows of the embedding train.
                     trainable_token_indices={"embed_tokens": new_token_ids})
    return get_peft_model(model, cfg)


def freeze_all_but_rows(model, rows: list[int]):
    """Warm-up: only the given embedding rows train (tied output rows follow); returns the hook
    handles that zero the other rows' gradients, to remove after the warm-up."""
    for p in model.parameters():
        p.requires_grad_(False)
    emb = model.get_input_embeddings().weight
    emb.requires_grad_(True)
    mask = torch.zeros(emb.shape[0], 1, dtype=emb.dtype, device=emb.device)
    mask[rows] = 1
    out = model.get_output_embeddings()
    handles = [emb.register_hook(lambda g: g * mask.to(g.dtype))]
    if out is not None and out.weight is not emb:
        out.weight.requires_grad_(True)
        handles.append(out.weight.register_hook(lambda g: g * mask.to(g.dtype)))
    return handles
