"""The driver's handle on the learner ranks: starts them, fans out each call, merges their metrics."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from cluster import ranks
from cluster.spec import JobSpec
from rl_system.learner.config import LearnerConfig
from rl_system.learner.rank import Learner
from rl_system.messages import TrainBatch
from rl_system.weight_sync.sender import SILENT_AFTER_S


class LearnerGroup:
    """Driver-side handle on W learner actors: starts them as one DeepSpeed group, shards batches,
    merges metrics."""

    def __init__(self, config: LearnerConfig, world_size: int = 1, role_group=None, cpus_per_rank: float = 1,
                 gpus_per_rank: float = 0, call_timeout_s: float | None = None):
        self.world_size = world_size
        self.config = config
        self.call_timeout_s = call_timeout_s  # None: wait forever; a call past it raises GetTimeoutError
        self.actors, master_addr, master_port = ranks.start_rank_actors(
            Learner, world_size, cpus_per_rank, gpus_per_rank, role_group, (config,),
            ranks.START_TIMEOUT_S if call_timeout_s is None else call_timeout_s)
        self.call("setup", master_addr, master_port)

    @classmethod
    def from_spec(cls, spec: JobSpec, model_path: str | Path, role_group=None) -> "LearnerGroup":
        c = spec.cluster.learner
        return cls(LearnerConfig.from_spec(spec, model_path), c.num_ranks, role_group, c.cpus_per_rank, c.gpus_per_rank,
                   c.call_timeout_s)

    def _shards(self, batch: TrainBatch) -> list[TrainBatch]:
        if len(batch) < self.world_size:
            raise ValueError(f"a batch of {len(batch)} completions cannot feed {self.world_size} learner ranks")
        return [batch.select(list(range(r, len(batch), self.world_size))) for r in range(self.world_size)]

    def _num_micro(self, shards: list[TrainBatch]) -> int:
        return -(-max(len(s) for s in shards) // self.config.micro_batch_size)

    def _get(self, refs: list, extra_s: float = 0.0) -> list:
        import ray

        return ray.get(refs, timeout=None if self.call_timeout_s is None else self.call_timeout_s + extra_s)

    def train_step(self, batch: TrainBatch) -> dict:
        shards = self._shards(batch)
        per_rank_tokens = batch.num_tokens() / self.world_size
        per_rank_anchor = batch.num_anchor_tokens() / self.world_size
        num_micro = self._num_micro(shards)
        results = self._get([a.train_step.remote(s, per_rank_tokens, num_micro, per_rank_anchor)
                             for a, s in zip(self.actors, shards)])
        return merge_metrics(results)

    def logprobs(self, batch: TrainBatch) -> list[list[float]]:
        shards = self._shards(batch)
        num_micro = self._num_micro(shards)
        parts = self._get([a.logprobs.remote(s, num_micro) for a, s in zip(self.actors, shards)])
        rows: list[list[float]] = [[] for _ in range(len(batch))]
        for rank, part in enumerate(parts):
            for j, row in enumerate(part):
                rows[rank + j * self.world_size] = row
        return rows

    def rank_of(self, error: Exception) -> int | None:
        """The rank whose actor a RayActorError reports dead or unreachable; None for any other actor."""
        dead = getattr(error, "actor_id", None)
        # ActorHandle has no public id accessor; `_actor_id` is what Ray's own utilities read.
        ids = [actor._actor_id.hex() for actor in self.actors]
        return ids.index(dead) if dead in ids else None

    def call(self, method: str, *args) -> list:
        """Run a collective method on every rank; returns the per-rank results."""
        return self._get([getattr(a, method).remote(*args) for a in self.actors])

    def call_each(self, method: str, per_rank: Sequence) -> list:
        """Run a collective method on every rank with that rank's own argument."""
        if len(per_rank) != self.world_size:
            raise ValueError(f"{method}: {len(per_rank)} arguments for {self.world_size} learner ranks")
        return self._get([getattr(a, method).remote(arg) for a, arg in zip(self.actors, per_rank)])

    def named_parameters_for_push(self) -> list[tuple[str, torch.Tensor]]:
        return self.call("named_parameters_for_push")[0]

    def push_rendezvous(self) -> tuple[str, int]:
        """Rank 0's node address and a port free there, for the weight-push group it hosts."""
        return self._get([self.actors[0].rendezvous.remote()])[0]

    def init_weight_sender(self, master_addr: str, port: int, world_size: int, **kwargs):
        """Start rank 0 joining the push group; returns the Ray ref to wait on together with the
        receivers' joins (the rendezvous completes only when all have joined)."""
        return self.actors[0].init_weight_sender.remote(master_addr, port, world_size, **kwargs)

    def push_weights(self, version: int, receivers: Sequence[Any], receivers_s: float = 0.0) -> dict:
        """`receivers_s`: how long the sender may wait on the receivers (its group's timeout), on top of
        the learner's own call timeout, so that a hung receiver is named by the sender (ReceiversSilent)
        rather than taken for a hung learner."""
        return self._get([a.push_weights.remote(version, list(receivers)) for a in self.actors],
                         receivers_s + SILENT_AFTER_S)[0]

    def save_hf(self, path: str | Path) -> str:
        return self.call("save_hf", str(path))[0]

    def save_checkpoint(self, directory: str | Path, client_state: dict | None = None) -> None:
        self.call("save_checkpoint", str(directory), client_state)

    def load_checkpoint(self, directory: str | Path) -> dict:
        return self.call("load_checkpoint", str(directory))[0]

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


GLOBAL_METRICS = ("tokens", "grad_norm", "step", "lr", "ce", "anchor_tokens")


def merge_metrics(per_rank: list[dict]) -> dict:
    """Token-weighted means of the per-rank means; grad norm, step and lr are global already."""
    tokens = sum(m["tokens"] for m in per_rank)
    merged = {k: sum(m[k] * m["tokens"] for m in per_rank) / max(tokens, 1.0)
              for k in per_rank[0] if k not in GLOBAL_METRICS}
    merged.update(tokens=tokens, grad_norm=per_rank[0]["grad_norm"], step=per_rank[0]["step"], lr=per_rank[0]["lr"])
    if "ce" in per_rank[0]:  # the anchor's token-weighted mean, over the anchor tokens
        anchor = sum(m["anchor_tokens"] for m in per_rank)
        merged["ce"] = sum(m["ce"] * m["anchor_tokens"] for m in per_rank) / max(anchor, 1.0)
        merged["anchor_tokens"] = anchor
    return merged
