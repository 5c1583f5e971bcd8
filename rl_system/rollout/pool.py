"""The rollout pool: N RolloutWorker actors, each in a placement group of its own.

The pool shards each request evenly over the live workers, restarts a worker that dies and
re-queues its share (nothing lost, nothing counted twice: results are placed by position), grows or
shrinks on request, and keeps the weight-push group in step with its membership: after any change
it re-forms the group and pushes the learner's current weights, so every worker serves the same
weight version before it takes work.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from cluster.cluster_spec import RolloutCluster
from cluster.logs import fields
from cluster.placement import RoleGroup, rollout_group
from cluster.spec import JobSpec
from indexing.sid import SidIndex
from rl_system.messages import RolloutGroup
from rl_system.rollout.constraint import ConstraintTable
from rl_system.rollout.engine import EngineConfig
from rl_system.rollout.worker import start_rollout_worker

log = logging.getLogger(__name__)

WORKER_FAILURES = (RayActorError, ActorDiedError, ActorUnavailableError)
MAX_RESTARTS_PER_CALL = 3


@dataclass
class _Slot:
    actor: Any
    group: RoleGroup
    node: str
    cpu_slot: int


def constraint_table_path(model_dir: Path, index: SidIndex, tokenizer) -> Path:
    """The trie's token-id table for this model's tokenizer, written beside the model once."""
    path = Path(model_dir) / "sid_constraint.json"
    if not path.exists():
        ConstraintTable.from_index(index, tokenizer).save(path)
    return path


class RolloutPool:
    def __init__(self, engine: EngineConfig, job: str, rollout: RolloutCluster, num_workers: int | None = None):
        self.cfg, self.job, self.rollout = engine, job, rollout
        self.slots: list[_Slot] = []
        self.learner = None  # set by attach_learner; None = no weight pushes (evaluation)
        self.version = 0
        self.restarts = 0
        self._add(num_workers or rollout.num_workers)

    @classmethod
    def from_spec(cls, spec: JobSpec, model_dir: str | Path, index: SidIndex, num_workers: int | None = None) -> "RolloutPool":
        from transformers import AutoTokenizer

        constraint = constraint_table_path(Path(model_dir), index, AutoTokenizer.from_pretrained(model_dir))
        return cls(EngineConfig.from_spec(spec, model_dir, constraint), spec.name, spec.cluster.rollout, num_workers)

    # ------------------------------------------------------------------ membership
    @property
    def workers(self) -> list:
        return [s.actor for s in self.slots]

    def _start(self, live: Sequence[_Slot]) -> _Slot:
        r = self.rollout
        group = rollout_group(self.job, r, len(live))
        node = ray.util.placement_group_table(group.group)["bundles_to_node_id"][0]
        # The lowest slot no live engine on that node holds: a replaced or added worker binds the
        # cores its predecessor freed.
        taken = {s.cpu_slot for s in live if s.node == node}
        cpu_slot = next(i for i in range(len(taken) + 1) if i not in taken)
        actor = start_rollout_worker(replace(self.cfg, cpu_slot=cpu_slot), cpus=r.cpus_per_worker * r.tensor_parallel,
                                     gpus=r.gpus_per_worker * r.tensor_parallel, scheduling_strategy=group.strategy())
        return _Slot(actor, group, node, cpu_slot)

    def _add(self, count: int) -> None:
        new: list[_Slot] = []
        for _ in range(count):
            new.append(self._start(self.slots + new))
        ray.get([s.actor.weight_version.remote() for s in new])  # engines are up once this answers
        self.slots.extend(new)
        log.info("rollout workers started", extra=fields(added=count, total=len(self.slots)))

    def _kill(self, slot: _Slot) -> None:
        try:
            ray.kill(slot.actor)
        finally:
            slot.group.remove()

    def scale(self, num_workers: int) -> None:
        """Grow or shrink the pool; new workers get the current weights before they serve."""
        if num_workers < 1:
            raise ValueError(f"a rollout pool needs at least one worker, got {num_workers}")
        if num_workers > len(self.slots):
            self._add(num_workers - len(self.slots))
        while len(self.slots) > num_workers:
            self._kill(self.slots.pop())
        self._resync()
        log.info("rollout pool scaled", extra=fields(workers=len(self.slots), version=self.version))

    def _replace(self, index: int) -> None:
        dead = self.slots[index]
        try:
            self._kill(dead)
        except WORKER_FAILURES:
            pass
        self.slots[index] = self._start(self.slots[:index] + self.slots[index + 1:])
        ray.get(self.slots[index].actor.weight_version.remote())
        self.restarts += 1
        log.warning("rollout worker restarted", extra=fields(slot=index, restarts=self.restarts))
        self._resync()

    # ------------------------------------------------------------------ weights
    def attach_learner(self, learner, version: int = 0) -> None:
        """Form the push group with the learner and send it the learner's weights as `version`."""
        self.learner = learner
        self.version = version
        self._resync()

    def _resync(self) -> None:
        if self.learner is None:
            return
        # Learner rank 0 hosts the group's store, so the address and port are its own: the driver's
        # would not be reachable (or free) there when rank 0 sits on another node.
        master_addr, port = self.learner.push_rendezvous()
        ranks = ray.get([w.num_ranks.remote() for w in self.workers])
        world = 1 + sum(ranks)
        offsets = [1 + sum(ranks[:i]) for i in range(len(ranks))]
        backend = self.cfg.placement.dist_backend
        refs = [self.learner.init_weight_sender(master_addr, port, world)]
        refs += [w.init_weight_group.remote(master_addr, port, off, world, backend)
                 for w, off in zip(self.workers, offsets)]
        ray.get(refs)
        self.learner.push_weights(self.version, self.workers)

    def push(self, version: int) -> dict:
        """Send the learner's current weights to every worker as `version`; generation waits meanwhile."""
        if self.learner is None:
            raise RuntimeError("RolloutPool.push before attach_learner")
        stats = self.learner.push_weights(version, self.workers)
        self.version = version
        return stats

    def versions(self) -> list[int]:
        return ray.get([w.weight_version.remote() for w in self.workers])

    # ------------------------------------------------------------------ work
    def _run_sharded(self, method: str, items: Sequence, **kwargs) -> list:
        """Call `method` on contiguous shards of `items`, one per worker; results in input order."""
        results: list = [None] * len(items)
        pending = list(range(len(items)))
        for _ in range(MAX_RESTARTS_PER_CALL + 1):
            if not pending:
                break
            n = len(self.slots)
            shards = [pending[i * len(pending) // n:(i + 1) * len(pending) // n] for i in range(n)]
            refs = {i: getattr(self.slots[i].actor, method).remote([items[j] for j in shard], **kwargs)
                    for i, shard in enumerate(shards) if shard}
            failed = []
            for i, ref in refs.items():
                try:
                    for j, out in zip(shards[i], ray.get(ref)):
                        results[j] = out
                except WORKER_FAILURES as exc:
                    log.warning("rollout worker failed; re-queueing its prompts",
                                extra=fields(slot=i, prompts=len(shards[i]), error=type(exc).__name__))
                    failed.append(i)
            pending = [j for i in failed for j in shards[i]]
            for i in failed:
                self._replace(i)
        if pending:
            raise RuntimeError(f"{len(pending)} prompts still failed after {MAX_RESTARTS_PER_CALL} worker restarts")
        return results

    def generate(self, prompts: Sequence, n: int, temperature: float, max_tokens: int, mode: str | None,
                 top_p: float = 1.0) -> list[RolloutGroup]:
        return self._run_sharded("generate", prompts, n=n, temperature=temperature, max_tokens=max_tokens,
                                 mode=mode, top_p=top_p)

    def beam(self, prompts: Sequence, width: int) -> list:
        return self._run_sharded("beam", prompts, width=width)

    def shutdown(self) -> None:
        for slot in self.slots:
            try:
                self._kill(slot)
            except WORKER_FAILURES:
                pass
        self.slots = []
