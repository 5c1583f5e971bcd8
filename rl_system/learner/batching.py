"""Train batches as tensors: rows packed so every completion starts at one column, and micro-batches."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rl_system.messages import TrainBatch


@dataclass
class Packed:
    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    position_ids: torch.Tensor  # [B, L]
    targets: torch.Tensor  # [B, C] completion tokens
    mask: torch.Tensor  # [B, C] float, 1 on trained completion tokens
    advantages: torch.Tensor  # [B]
    rollout_logp: torch.Tensor | None  # [B, C], NaN on rows no engine sampled
    anchor: torch.Tensor  # [B] bool: the row is a CE-anchor target, not a sample

    @property
    def sampled_mask(self) -> torch.Tensor:
        """`mask` on the sampled rows only: the policy-gradient and KL terms' tokens."""
        return self.mask * (~self.anchor)[:, None]

    @property
    def anchor_mask(self) -> torch.Tensor:
        return self.mask * self.anchor[:, None]


def pack(batch: TrainBatch, device: torch.device, pad_id: int = 0) -> Packed:
    n = len(batch)
    p_max = max(len(p) for p in batch.prompt_ids)
    c_max = max(len(c) for c in batch.completion_ids)
    ids = torch.full((n, p_max + c_max), pad_id, dtype=torch.long)
    attn = torch.zeros((n, p_max + c_max), dtype=torch.long)
    targets = torch.full((n, c_max), pad_id, dtype=torch.long)
    mask = torch.zeros((n, c_max), dtype=torch.float32)
    rollout = None if batch.rollout_logprobs is None else torch.zeros((n, c_max), dtype=torch.float32)
    for i, (p, c) in enumerate(zip(batch.prompt_ids, batch.completion_ids)):
        ids[i, p_max - len(p):p_max] = torch.as_tensor(p)
        ids[i, p_max:p_max + len(c)] = torch.as_tensor(c)
        attn[i, p_max - len(p):p_max + len(c)] = 1
        targets[i, :len(c)] = torch.as_tensor(c)
        mask[i, :len(c)] = 1.0 if batch.loss_mask is None else torch.as_tensor(batch.loss_mask[i], dtype=torch.float32)
        if rollout is not None:
            rollout[i, :len(c)] = torch.as_tensor(batch.rollout_logprobs[i], dtype=torch.float32)
    positions = (attn.cumsum(1) - 1).clamp(min=0)
    def to(t):
        return None if t is None else t.to(device)

    anchor = torch.as_tensor(batch.anchor or [False] * n, dtype=torch.bool)
    return Packed(to(ids), to(attn), to(positions), to(targets), to(mask),
                  torch.as_tensor(batch.advantages, dtype=torch.float32, device=device), to(rollout), to(anchor))


def completion_logits(model, packed: Packed) -> torch.Tensor:
    """Logits predicting each completion token, [B, C, V]."""
    c = packed.targets.shape[1]
    out = model(input_ids=packed.input_ids, attention_mask=packed.attention_mask, position_ids=packed.position_ids,
                logits_to_keep=c + 1, use_cache=False)
    return out.logits[:, :-1]


def micro_batches(batch: TrainBatch, size: int, count: int | None = None) -> tuple[list[TrainBatch], int]:
    """Split into `count` micro-batches (default: as many as `size` needs); returns (parts, real parts).

    Ranks must run the same number of forward/backward passes (ZeRO collectives run in each), so a
    rank with fewer rows than micro-batches runs masked-out filler parts after its real ones.
    """
    if len(batch) == 0:
        raise ValueError("cannot train on an empty batch")
    count = count or -(-len(batch) // size)
    real = min(count, len(batch))
    parts = [batch.select(rows.tolist()) for rows in np.array_split(np.arange(len(batch)), real)]
    return parts + [batch.select([0]).masked_out()] * (count - real), real
