"""The `cluster:` section of the job spec: where each role runs and what it reserves.

`resources` (custom Ray resources per rollout worker, learner rank or reward replica, e.g.
`{rollout_node: 1}`) pins a role to the nodes that advertise them: the KubeRay worker-group layout,
where learners, rollout workers and reward replicas each have nodes of their own.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


Resources = dict[str, float]


class RolloutCluster(Section):
    num_workers: int = Field(1, ge=1)
    gpus_per_worker: float = Field(0, ge=0)
    tensor_parallel: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1, gt=0)
    resources: Resources = {}
    kv_cache_gib: float = Field(1.0, gt=0)  # CPU only; GPU uses gpu_memory_utilization
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)
    # A generate, beam or weight push not answered this long counts as a dead worker's (replaced).
    call_timeout_s: float = Field(1800.0, gt=0)
    # How long `gream scale` waits for a new worker's placement before refusing the request; short,
    # because the job's steps wait meanwhile.
    scale_timeout_s: float = Field(60.0, gt=0)


class LearnerCluster(Section):
    """DeepSpeed training ranks, one Ray actor each (data parallel: every rank takes a share of each
    step's batch; for SFT, sft.batch_size is per rank)."""

    num_ranks: int = Field(1, ge=1)
    gpus_per_rank: float = Field(0, ge=0)
    cpus_per_rank: float = Field(1, gt=0)
    resources: Resources = {}
    # A collective (gradient all-reduce, barrier, the group's rendezvous) not done this long raises on
    # every rank waiting in it, so a hung or lost rank ends the group instead of stalling it. gloo does
    # not always keep it (a peer frozen mid all-reduce), so the SFT driver also ends the run when a
    # rank has not answered a health call for this long (sft.distributed).
    collective_timeout_s: float = Field(1800.0, gt=0)


class RLLearnerCluster(LearnerCluster):
    # A learner call (set-up, train step, push, checkpoint) not answered this long ends the job as
    # a dead learner would (exit 4): a DeepSpeed group cannot replace a rank.
    call_timeout_s: float = Field(1800.0, gt=0)


class RewardCluster(Section):
    replicas: int = Field(1, ge=1)
    # "auto": loopback on a one-node cluster; on more nodes, the replica's node address, with a
    # token generated for the run when none is given (a bound port off loopback always needs one).
    host: str = "auto"
    resources: Resources = {}
    token: str | None = None  # required off loopback: every request's header frame carries it
    timeout_s: float = Field(30.0, gt=0)  # a replica silent this long is pinged, then replaced if still silent
    # A larger request body is refused by the client; a replica's socket drops a larger frame unread.
    max_request_mib: float = Field(64.0, gt=0)
    # Replicas not serving this long after their start (no node with cluster.reward.resources, or no room) are refused.
    start_timeout_s: float = Field(300.0, gt=0)


class ClusterSpec(Section):
    address: str | None = None  # None = start a local Ray; "auto" or "ray://host:port" to join
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_cpus: int | None = Field(None, ge=1)
    rollout: RolloutCluster = RolloutCluster()
    # SFT ranks: one rank trains in the calling process; more start as Ray actors in a group of their own.
    sft: LearnerCluster = LearnerCluster()
    learner: RLLearnerCluster = RLLearnerCluster()
    reward: RewardCluster = RewardCluster()
