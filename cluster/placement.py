"""Ray start-up and one placement group per role.

Learner ranks share one group (they form one DeepSpeed job and should pack together). Each
rollout worker gets a group of its own, so the rollout pool can grow or shrink at run time without
touching the learner's reservation. Reward replicas reserve no CPU (they score in microseconds per
completion) and need no group.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable

import ray
from ray.exceptions import GetTimeoutError
from ray.util.placement_group import (
    PlacementGroup,
    placement_group,
    remove_placement_group,
)
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.cluster_spec import ClusterSpec, LearnerCluster, RolloutCluster
from cluster.errors import GreamError
from cluster.logs import fields

log = logging.getLogger(__name__)


def logical_cpus_needed(c: ClusterSpec) -> float:
    """The larger of the two phases' needs: SFT ranks, or RL's learner, rollout and reward roles."""
    rl = (c.learner.num_ranks * c.learner.cpus_per_rank
          + c.rollout.num_workers * c.rollout.cpus_per_worker * c.rollout.tensor_parallel
          + c.reward.replicas)
    return max(rl, c.sft.num_ranks * c.sft.cpus_per_rank)


def init_ray(cluster: ClusterSpec, address: str | None = None) -> None:
    """Join `address` (or cluster.address); without one, start a local Ray sized for the job's roles."""
    if ray.is_initialized():
        return
    address = address or cluster.address
    # Workers must import the repo's packages; the driver's working tree ships with the job.
    env = {"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "VLLM_LOGGING_LEVEL": "WARNING"}}
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=True)
    else:
        # Logical CPUs may exceed the cores: actors mostly wait on each other, so reserving whole
        # cores per role would leave a 2-core laptop unable to place the job at all.
        need = logical_cpus_needed(cluster) + 1
        num_cpus = cluster.num_cpus or max(int(need + 0.999), os.cpu_count() or 1)
        # "local": a new instance even where RAY_ADDRESS or /tmp/ray/ray_current_cluster (written by
        # `ray start` and test clusters, and left behind when they stop) names another one.
        ray.init(address="local", num_cpus=num_cpus, runtime_env=env, include_dashboard=False, log_to_driver=True)
    log.info("ray ready", extra=fields(resources=ray.cluster_resources()))


class Unplaceable(GreamError, RuntimeError):
    """A reservation the cluster could not hold within its wait: the job (or a scale request) asks
    for more than the cluster's free resources."""


def get_started(actors: list, refs: list, timeout_s: float, failure: Callable[[], Exception]) -> list:
    """`ray.get(refs)` on actors just started; past `timeout_s` (not placed, or stuck starting) the
    actors are killed and `failure()` raised."""
    try:
        return ray.get(refs, timeout=timeout_s)
    except GetTimeoutError:
        for actor in actors:
            ray.kill(actor)
        raise failure() from None


@dataclass
class RoleGroup:
    name: str
    group: PlacementGroup

    def strategy(self, bundle_index: int = 0) -> PlacementGroupSchedulingStrategy:
        return PlacementGroupSchedulingStrategy(placement_group=self.group,
                                                placement_group_bundle_index=bundle_index)

    def remove(self) -> None:
        remove_placement_group(self.group)


def _reserve(name: str, bundles: list[dict[str, float]], strategy: str = "PACK", timeout_s: float = 120) -> RoleGroup:
    bundles = [{k: v for k, v in b.items() if v > 0} for b in bundles]
    # Unique names: a restarted or resized role must not collide with a group still being torn down.
    name = f"{name}-{os.urandom(3).hex()}"
    group = placement_group(bundles, strategy=strategy, name=name)
    ready = group.wait(timeout_seconds=timeout_s)
    if not ready:
        remove_placement_group(group)
        raise Unplaceable(f"placement group '{name}' ({bundles}) could not be placed within {timeout_s:.0f}s; "
                          f"the cluster has {ray.available_resources()} free")
    return RoleGroup(name, group)


def ranks_group(job: str, role: str, ranks: LearnerCluster) -> RoleGroup:
    """One bundle per rank of a DeepSpeed group (the RL learner's, `role="learner"`, or SFT's)."""
    bundle = {"CPU": ranks.cpus_per_rank, "GPU": ranks.gpus_per_rank, **ranks.resources}
    return _reserve(f"{job}-{role}", [bundle] * ranks.num_ranks)


def rollout_group(job: str, rollout: RolloutCluster, worker_index: int, timeout_s: float = 120) -> RoleGroup:
    c = rollout
    bundle = {"CPU": c.cpus_per_worker * c.tensor_parallel, "GPU": c.gpus_per_worker * c.tensor_parallel,
              **c.resources}
    return _reserve(f"{job}-rollout-{worker_index}", [bundle], timeout_s=timeout_s)

