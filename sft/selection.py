"""Keeping the best epoch's weights during SFT (`sft.eval_every`): after each validation, the
trainable parameters are copied to the CPU when the validation metric improved, and copied back
into the model before it is saved.

Every rank validates (same users, same weights), but rank 0's score decides and is broadcast, so
all ranks take the same branch: under ZeRO-3 the copy gathers the partitioned parameters, which is
a collective every rank must join. Only rank 0 keeps the copy; it is the rank that saves.
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Sequence

import torch

Gather = Callable[[int | None], ContextManager]  # modifier rank -> full parameters inside the block


def no_gather(modifier_rank: int | None) -> ContextManager:
    return contextlib.nullcontext()


def rank0_decides(flag: bool, device: torch.device) -> bool:
    """Rank 0's `flag` on every rank (itself where there is no process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


class BestWeights:
    def __init__(self, params: Sequence[torch.nn.Parameter], rank: int, device: torch.device,
                 gather: Gather = no_gather):
        self.params = list(params)
        self.rank, self.device, self.gather = rank, device, gather
        self.epoch: int | None = None
        self.score = float("-inf")
        self.metrics: dict[str, float] = {}
        self._saved: list[torch.Tensor] = []

    @torch.no_grad()
    def offer(self, epoch: int, score: float, metrics: dict[str, float]) -> bool:
        """Keep the current weights when `score` beats the best so far (ties keep the earlier epoch)."""
        if not rank0_decides(score > self.score, self.device):
            return False
        self.epoch, self.score, self.metrics = epoch, score, dict(metrics)
        with self.gather(None):
            if self.rank == 0:
                self._saved = [p.detach().to("cpu", copy=True) for p in self.params]
        return True

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "score": self.score, "metrics": self.metrics, "saved": self._saved}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.score, self.metrics = state["epoch"], state["score"], dict(state["metrics"])
        self._saved = list(state["saved"]) if self.rank == 0 else []  # only rank 0 restores them

    @torch.no_grad()
    def restore(self) -> None:
        """Put the kept weights back into the model (every rank calls it)."""
        if self.epoch is None:
            raise RuntimeError("no validation has run: nothing to restore")
        with self.gather(0):
            if self.rank == 0:
                for p, saved in zip(self.params, self._saved):
                    p.copy_(saved.to(p.device))
