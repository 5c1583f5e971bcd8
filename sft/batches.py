"""SFT batches: tokenised examples bucketed by length, left-padded, and the loss of one batch."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import torch

from cluster.device import autocast
from sft.sid_losses import Objective, TeacherTargets, head_view
from sft.tasks import IGNORE_INDEX, TokenizedExample

BUCKET_BATCHES = 32  # batches sorted by length together: little padding, still a random order


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor  # [B, W]: the token position t predicts, IGNORE_INDEX where unsupervised

    @property
    def supervised_tokens(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())


def collate(examples: Sequence[TokenizedExample], pad_id: int) -> Batch:
    """Left-pad a batch; positions count real tokens only, as in vLLM."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, width - n:] = torch.tensor(e.input_ids)
        targets[row, width - n:width - 1] = torch.tensor(e.labels[1:])
        mask[row, width - n:] = 1
    positions = (mask.cumsum(1) - 1).clamp_min(0)
    return Batch(ids, mask, positions, targets)


def make_batches(examples: Sequence[TokenizedExample], batch_size: int, rng: random.Random) -> list[list[TokenizedExample]]:
    """Shuffle, sort by length within buckets of BUCKET_BATCHES batches, then shuffle the batches."""
    order = list(examples)
    rng.shuffle(order)
    span = batch_size * BUCKET_BATCHES
    batches = []
    for start in range(0, len(order), span):
        bucket = sorted(order[start:start + span], key=lambda e: len(e.input_ids))
        batches.extend(bucket[i:i + batch_size] for i in range(0, len(bucket), batch_size))
    rng.shuffle(batches)
    return batches


def token_loss(model, batch: Batch, device: torch.device, amp_dtype: torch.dtype = torch.float32,
               objective: Objective | None = None, teacher: TeacherTargets | None = None) -> torch.Tensor:
    """Mean cross-entropy over the supervised tokens, or the `objective`'s loss (distilled from the
    `teacher`'s targets of the batch, sft/distill.py). The LM head runs only at positions where some
    row has a target (through the model's own forward, so ZeRO-3 gathering and peft wrappers apply,
    unless the objective computes it itself: sft/sid_losses.py `head_view`)."""
    targets = batch.targets.to(device)
    positions = (targets != IGNORE_INDEX).any(0).nonzero().squeeze(1)
    inputs = {"input_ids": batch.input_ids.to(device), "attention_mask": batch.attention_mask.to(device),
              "position_ids": batch.position_ids.to(device)}
    if objective is not None:
        kept = None if teacher is None else teacher._replace(rows=teacher.rows.to(device)[:, positions])
        return objective(head_view(model, inputs, positions, device, amp_dtype), targets[:, positions], teacher=kept)
    with autocast(device.type, amp_dtype):
        out = model(**inputs, logits_to_keep=positions, use_cache=False)
    logits = out.logits.float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets[:, positions].reshape(-1),
                                             ignore_index=IGNORE_INDEX)
