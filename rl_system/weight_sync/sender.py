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

import gc
import logging
import time
import traceback
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from cluster.logs import fields
from rl_system.weight_sync.group import GROUP_TIMEOUT_S, broadcast_async, join_group
from rl_system.weight_sync.plan import (
    DEFAULT_BUCKET_BYTES,
    WeightSyncError,
    plan_buckets,
    wire_tensors,
)

log = logging.getLogger(__name__)
# After a failed push closes the group, live receivers fail out of their receives at once; one still
# silent this long after (or the group's timeout, if shorter) is hung.
SILENT_AFTER_S = 30.0


class ReceiversSilent(WeightSyncError):
    """Receivers that had not confirmed a push by its deadline: hung, theirs the fault, not the sender's.
    `silent`: their positions in the push's receiver list."""

    def __init__(self, silent: list[int], timeout_s: float):
        super().__init__(f"receivers {silent} did not confirm the push within {timeout_s:.0f}s")
        self.silent, self.timeout_s = silent, timeout_s

    def __reduce__(self):  # it crosses Ray to the driver, which reads `silent`
        return type(self), (self.silent, self.timeout_s)


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
                 wire_dtype: torch.dtype | None = None, timeout_s: float = GROUP_TIMEOUT_S):
        """`timeout_s`: the group's join and broadcast timeout, and a push's deadline for its receipts
        (cluster.rollout.call_timeout_s in a job)."""
        if world_size < 2:
            raise WeightSyncError(f"world_size must count the sender and at least one receiver, got {world_size}")
        self.master_addr, self.port, self.world_size = master_addr, port, world_size
        self.backend, self.device = backend, torch.device(device)
        self.bucket_bytes, self.wire_dtype = bucket_bytes, wire_dtype
        self.timeout_s = timeout_s
        self.group = None

    def connect(self) -> None:
        """Join as rank 0; returns once every receiver has joined too."""
        self.group = join_group(self.master_addr, self.port, 0, self.world_size, self.backend, self.timeout_s)

    def _fail(self, refs: list, error: Exception, wait_s: float) -> None:
        """Close the group, so that live receivers fail out of the receives this push left them in,
        then raise ReceiversSilent naming those still silent after `wait_s`, or `error` when none is."""
        import ray

        self.group = None
        gc.collect()  # a traceback may hold the group in a cycle; its sockets close when it is freed
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=wait_s)
        silent = [i for i, ref in enumerate(refs) if ref not in ready]
        if silent:
            raise ReceiversSilent(silent, self.timeout_s) from error
        raise error

    def push(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int, receivers: Sequence[Any]) -> PushStats:
        import ray

        if self.group is None:
            raise WeightSyncError("WeightSender.push before connect()")
        start = time.perf_counter()  # from the call, so the bucket plan counts (the learner calls right after its step)
        named = list(named_tensors)
        buckets = plan_buckets(named, self.bucket_bytes, self.wire_dtype)
        wire = [b.to_wire() for b in buckets]
        refs = [r.receive_weights.remote(wire, version) for r in receivers]
        try:  # a broadcast a receiver does not take raises after the group's timeout
            nbytes = self._broadcast(buckets, named)
        except RuntimeError as exc:
            # The traceback's frames hold the broadcasts, and they the group's sockets, open.
            traceback.clear_frames(exc.__traceback__)
            self._fail(refs, exc, min(SILENT_AFTER_S, self.timeout_s))
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=max(0.0, start + self.timeout_s - time.perf_counter()))
        if len(ready) < len(refs):
            self._fail(refs, WeightSyncError("receivers did not confirm the push in time"), 0)
        receipts = ray.get(refs)
        load = max(r["load_s"] for r in receipts)
        in_place = all(r["in_place"] for r in receipts)
        stats = PushStats(version, time.perf_counter() - start, nbytes, len(buckets), len(named), load, in_place)
        log.info("pushed weights", extra=fields(version=version, secs=round(stats.seconds, 3),
                                                 load_secs=round(load, 3), mib=nbytes >> 20, in_place=in_place,
                                                 buckets=len(buckets), receivers=len(receivers)))
        return stats

    def _broadcast(self, buckets: list, named: list[tuple[str, torch.Tensor]]) -> int:
        """Send every bucket's tensors; returns the bytes sent."""
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
        return nbytes

    def broadcast_raw(self, sizes: Sequence[int], receivers: Sequence[Any]) -> float:
        """Broadcast uint8 buffers of `sizes` bytes with no plan, packing or loading: the floor a
        push is measured against. Receivers run `receive_raw_broadcast(sizes)`."""
        import ray

        buffers = [torch.empty(n, dtype=torch.uint8, device=self.device) for n in sizes]
        start = time.perf_counter()
        refs = [r.receive_raw_broadcast.remote(list(sizes)) for r in receivers]
        for work in [broadcast_async(self.group, buf) for buf in buffers]:
            work.wait()
        ray.get(refs, timeout=self.timeout_s)
        return time.perf_counter() - start
