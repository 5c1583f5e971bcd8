"""Learner rank 0's side of a weight push.

Weight push: learner rank 0 -> every rollout worker's vLLM workers.

Two channels, because vLLM cannot carry tensors through `collective_rpc` (pickling a tensor's
memoryview fails) and a torch.distributed group cannot carry names:
- the plan (names, dtypes, shapes, grouped into buckets) goes through the rollout worker's Ray
  method -> `LLM.collective_rpc` -> `WeightReceiverExtension.receive_weights`;
- the bytes go bucket by bucket over a dedicated group (TCPStore + ProcessGroupGloo on CPU,
  ProcessGroupNCCL on GPUs) in which the sender is rank 0 and every vLLM worker (each TP rank of
  each rollout engine) has its own rank. Each tensor is its own broadcast, straight from the
  sender's tensor (packing a bucket first costs a copy of the model), into slices of one flat
  buffer per bucket on the receiver.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from cluster.logs import fields
from rl_system.weight_sync.group import broadcast_async, join_group
from rl_system.weight_sync.plan import (
    DEFAULT_BUCKET_BYTES,
    WeightSyncError,
    plan_buckets,
    wire_tensors,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- sender
@dataclass(frozen=True)
class PushStats:
    version: int
    seconds: float
    bytes: int
    buckets: int
    tensors: int
    load_seconds: float  # slowest receiver's time loading into its model, excluding waits for bytes
    in_place: bool  # every receiver copied into its parameters (False: some went through vLLM's reload)


class WeightSender:
    """Rank 0 of the weight group, in the learner's rank-0 process.

    `receivers` are rollout-worker handles exposing `receive_weights.remote(plan, version)` (Ray
    actors, see `RolloutWorker`) that return the receipt of `WeightReceiverExtension.receive_weights`;
    each must have joined the group (`init_weight_group`)."""

    def __init__(self, master_addr: str, port: int, world_size: int, backend: str = "gloo",
                 device: torch.device | str = "cpu", bucket_bytes: int = DEFAULT_BUCKET_BYTES,
                 wire_dtype: torch.dtype | None = None):
        if world_size < 2:
            raise WeightSyncError(f"world_size must count the sender and at least one receiver, got {world_size}")
        self.master_addr, self.port, self.world_size = master_addr, port, world_size
        self.backend, self.device = backend, torch.device(device)
        self.bucket_bytes, self.wire_dtype = bucket_bytes, wire_dtype
        self.group = None

    def connect(self) -> None:
        """Join as rank 0; returns once every receiver has joined too."""
        self.group = join_group(self.master_addr, self.port, 0, self.world_size, self.backend)

    def push(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int, receivers: Sequence[Any]) -> PushStats:
        import ray

        if self.group is None:
            raise WeightSyncError("WeightSender.push before connect()")
        start = time.perf_counter()  # from the call, so the bucket plan counts (the learner calls right after its step)
        named = list(named_tensors)
        buckets = plan_buckets(named, self.bucket_bytes, self.wire_dtype)
        wire = [b.to_wire() for b in buckets]
        refs = [r.receive_weights.remote(wire, version) for r in receivers]
        offset, nbytes, in_flight = 0, 0, []
        for bucket in buckets:
            count = len(bucket.tensors)
            # Casting bucket i + 1 (when the wire dtype differs) overlaps the broadcasts of bucket i.
            tensors = wire_tensors(bucket, [t for _, t in named[offset: offset + count]], self.device)
            offset += count
            works = [broadcast_async(self.group, t) for t in tensors]
            for work in in_flight:
                work.wait()
            in_flight = works
            nbytes += bucket.nbytes
        for work in in_flight:
            work.wait()
        receipts = ray.get(refs)
        load = max(r["load_s"] for r in receipts)
        in_place = all(r["in_place"] for r in receipts)
        stats = PushStats(version, time.perf_counter() - start, nbytes, len(buckets), len(named), load, in_place)
        log.info("pushed weights", extra=fields(version=version, secs=round(stats.seconds, 3),
                                                 load_secs=round(load, 3), mib=nbytes >> 20, in_place=in_place,
                                                 buckets=len(buckets), receivers=len(receivers)))
        return stats

    def broadcast_raw(self, sizes: Sequence[int], receivers: Sequence[Any]) -> float:
        """Broadcast uint8 buffers of `sizes` bytes with no plan, packing or loading: the floor a
        push is measured against. Receivers run `receive_raw_broadcast(sizes)`."""
        import ray

        buffers = [torch.empty(n, dtype=torch.uint8, device=self.device) for n in sizes]
        start = time.perf_counter()
        refs = [r.receive_raw_broadcast.remote(list(sizes)) for r in receivers]
        for work in [broadcast_async(self.group, buf) for buf in buffers]:
            work.wait()
        ray.get(refs)
        return time.perf_counter() - start
