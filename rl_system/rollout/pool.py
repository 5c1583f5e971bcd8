"""The rollout pool: N RolloutWorker actors, each in a placement group of its own.

The pool shards each request evenly over the live workers, restarts a worker that dies and
re-queues its share (nothing lost, nothing counted twice: results are placed by position), grows or
shrinks on request, and keeps the weight-push group in step with its membership: after any change
it re-forms the group and pushes the learner's current weights, so every worker serves the same
weight version before it takes work.

Two threads may call it, the driver's loop and the rollout-ahead thread (`rl.max_staleness`): its
calls that use or change the workers run one at a time, so a weight push waits for the generation
call in flight and the next generation call for the push, never both at once. `versions()` is not
serialized: a worker answers it mid-call.
"""
from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import ray
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    GetTimeoutError,
    RayActorError,
    RayTaskError,
)

from cluster.cluster_spec import RolloutCluster
from cluster.errors import first_line
from cluster.logs import fields
from cluster.placement import RoleGroup, Unplaceable, rollout_group
from cluster.spec import JobSpec
from indexing.sid import SidIndex
from rl_system.messages import RolloutGroup
from rl_system.rollout.constraint import ConstraintTable
from rl_system.rollout.engine import EngineConfig
from rl_system.rollout.worker import start_rollout_worker

log = logging.getLogger(__name__)

WORKER_FAILURES = (RayActorError, ActorDiedError, ActorUnavailableError)
# What a push or group formation raises when a member is lost: its death, the learner's error
# about it (gloo), or no answer (a hung member; NCCL would hang rather than fail).
PUSH_FAILURES = (*WORKER_FAILURES, RayTaskError, GetTimeoutError)
MAX_RESTARTS_PER_CALL = 3
# A live worker answers a version query at once, even mid-generation or mid-push (no engine lock).
PROBE_TIMEOUT_S = 60


class EngineStartFailed(RuntimeError):
    """New rollout workers whose engines did not come up (the pool removed them again)."""


def _value_or_none(ref):
    try:
        return ray.get(ref)
    except WORKER_FAILURES:
        return None


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


def _serialized(method):
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return call


class RolloutPool:
    def __init__(self, engine: EngineConfig, job: str, rollout: RolloutCluster, num_workers: int | None = None):
        self._lock = threading.RLock()
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

    @property
    def num_workers(self) -> int:
        return len(self.slots)

    def _start(self, live: Sequence[_Slot], group: RoleGroup | None = None) -> _Slot:
        r = self.rollout
        group = group or rollout_group(self.job, r, len(live))
        node = ray.util.placement_group_table(group.group)["bundles_to_node_id"][0]
        # The lowest slot no live engine on that node holds: a replaced or added worker binds the
        # cores its predecessor freed.
        taken = {s.cpu_slot for s in live if s.node == node}
        cpu_slot = next(i for i in range(len(taken) + 1) if i not in taken)
        actor = start_rollout_worker(replace(self.cfg, cpu_slot=cpu_slot), cpus=r.cpus_per_worker * r.tensor_parallel,
                                     gpus=r.gpus_per_worker * r.tensor_parallel, scheduling_strategy=group.strategy())
        return _Slot(actor, group, node, cpu_slot)

    def _reserve(self, count: int, timeout_s: float) -> list[RoleGroup]:
        # All reservations before any engine starts: a request the cluster cannot hold is undone
        # whole, and costs no engine start.
        groups: list[RoleGroup] = []
        try:
            for i in range(count):
                groups.append(rollout_group(self.job, self.rollout, len(self.slots) + i, timeout_s))
        except Unplaceable:
            for group in groups:
                group.remove()
            raise
        return groups

    def _add(self, count: int) -> None:
        for group in self._reserve(count, 120):
            self.slots.append(self._start(self.slots, group))
        # Engines are up once this answers; one that died starting is replaced like any other.
        self._replace_failed(timeout_s=self.rollout.call_timeout_s)
        log.info("rollout workers started", extra=fields(added=count, total=len(self.slots)))

    def _grow(self, count: int) -> None:
        """Add `count` workers, all or none: the cluster cannot hold them (Unplaceable), or an engine
        does not come up (EngineStartFailed; a new engine that failed once will fail again, as its
        model, node or memory are the same): either way the pool is left as it was."""
        first = len(self.slots)
        for group in self._reserve(count, self.rollout.scale_timeout_s):
            self.slots.append(self._start(self.slots, group))
        refs = [s.actor.weight_version.remote() for s in self.slots[first:]]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=self.rollout.call_timeout_s)
        problems = []
        for i, ref in enumerate(refs, start=first):
            if ref not in ready:
                problems.append(f"worker {i}: no answer within {self.rollout.call_timeout_s:.0f}s "
                                "(cluster.rollout.call_timeout_s)")
                continue
            try:
                ray.get(ref)
            except WORKER_FAILURES as exc:
                problems.append(f"worker {i}: {first_line(exc)}")
        if problems:
            for slot in self.slots[first:]:
                self._kill_quietly(slot)
            del self.slots[first:]
            raise EngineStartFailed("; ".join(problems))
        log.info("rollout workers started", extra=fields(added=count, total=len(self.slots)))

    def _kill(self, slot: _Slot) -> None:
        try:
            ray.kill(slot.actor)
        finally:
            slot.group.remove()

    def _kill_quietly(self, slot: _Slot) -> None:
        try:
            self._kill(slot)
        except WORKER_FAILURES:
            pass

    @_serialized
    def scale(self, num_workers: int) -> bool:
        """Grow or shrink the pool; new workers get the current weights before they serve. A size
        the cluster cannot place within `cluster.rollout.scale_timeout_s`, or whose new engines do not
        all start, is refused with a warning (False) and the pool stays as it was: a scale request must
        never end the job."""
        if num_workers < 1:
            raise ValueError(f"a rollout pool needs at least one worker, got {num_workers}")
        if num_workers > len(self.slots):
            try:
                self._grow(num_workers - len(self.slots))
            except (Unplaceable, EngineStartFailed) as exc:
                log.warning("scale request refused; the pool stays as it is",
                            extra=fields(requested=num_workers, workers=len(self.slots), reason=str(exc)))
                return False
        while len(self.slots) > num_workers:
            self._kill(self.slots.pop())
        self._resync()
        log.info("rollout pool scaled", extra=fields(workers=len(self.slots), version=self.version))
        return True

    def _replace(self, index: int) -> None:
        self._kill_quietly(self.slots[index])
        self.slots[index] = self._start(self.slots[:index] + self.slots[index + 1:])
        self.restarts += 1
        log.warning("rollout worker restarted", extra=fields(slot=index, restarts=self.restarts))

    def _replace_failed(self, timeout_s: float = PROBE_TIMEOUT_S) -> list[int]:
        """Replace every worker that is dead or does not answer a version query within `timeout_s`
        (the query needs no engine lock, so a live worker answers at once, even mid-push); returns
        their slots. Replacements are probed in turn: one may die starting too."""
        replaced: list[int] = []
        for _ in range(MAX_RESTARTS_PER_CALL + 1):
            failed = [i for i, version in enumerate(self._poll(timeout_s)) if version is None]
            if not failed:
                return replaced
            for i in failed:
                self._replace(i)
            replaced += failed
            timeout_s = self.rollout.call_timeout_s  # the replacements' engines are starting
        raise RuntimeError(f"rollout workers still failing after {MAX_RESTARTS_PER_CALL} restarts")

    # ------------------------------------------------------------------ weights
    @_serialized
    def attach_learner(self, learner, version: int = 0) -> None:
        """Form the push group with the learner and send it the learner's weights as `version`."""
        self.learner = learner
        self.version = version
        self._resync()

    def _resync(self, failure: Exception | None = None) -> dict:
        """Form the push group over the current workers and push the learner's weights as
        `self.version`. A worker lost meanwhile is replaced and the group formed again: a group
        with a dead member can carry no broadcast (gloo errors out, NCCL would hang). `failure`:
        the failed push that calls for this."""
        if self.learner is None:
            return {}
        for _ in range(MAX_RESTARTS_PER_CALL + 1):
            # A receiver the sender names as silent is hung (ReceiversSilent), whether or not its
            # actor still answers: replaced like a dead one.
            silent = list(getattr(failure, "silent", ()))
            for i in silent:
                self._replace(i)
            # Probed before forming too: the live members would wait for a dead one to join until
            # the group's timeout.
            replaced = silent + self._replace_failed()
            if failure is not None:
                if not replaced:
                    raise failure  # no worker at fault: the learner's own (a dead rank ends the job)
                log.warning("weight push failed on a lost or hung rollout worker; re-forming the push group",
                            extra=fields(slots=replaced, version=self.version, error=type(failure).__name__))
            try:
                return self._form_group_and_push()
            except PUSH_FAILURES as exc:
                failure = exc
        raise RuntimeError(f"the weight-push group did not form after {MAX_RESTARTS_PER_CALL} worker restarts")

    def _form_group_and_push(self) -> dict:
        # Learner rank 0 hosts the group's store, so the address and port are its own: the driver's
        # would not be reachable (or free) there when rank 0 sits on another node.
        master_addr, port = self.learner.push_rendezvous()
        ranks = ray.get([w.num_ranks.remote() for w in self.workers], timeout=self.rollout.call_timeout_s)
        world = 1 + sum(ranks)
        offsets = [1 + sum(ranks[:i]) for i in range(len(ranks))]
        backend = self.cfg.placement.dist_backend
        timeout_s = self.rollout.call_timeout_s  # the group's joins and broadcasts, and a push's receipts
        refs = [self.learner.init_weight_sender(master_addr, port, world, timeout_s=timeout_s)]
        refs += [w.init_weight_group.remote(master_addr, port, off, world, backend, timeout_s)
                 for w, off in zip(self.workers, offsets)]
        ray.get(refs, timeout=timeout_s)
        return self.learner.push_weights(self.version, self.workers, timeout_s)

    @_serialized
    def push(self, version: int) -> dict:
        """Send the learner's current weights to every worker as `version`; generation waits meanwhile."""
        if self.learner is None:
            raise RuntimeError("RolloutPool.push before attach_learner")
        try:
            stats = self.learner.push_weights(version, self.workers, self.rollout.call_timeout_s)
        except PUSH_FAILURES as exc:
            self.version = version
            return self._resync(failure=exc)
        self.version = version
        return stats

    def versions(self) -> list[int | None]:
        """Each worker's weight version; None for a dead or hung one (the next call replaces it)."""
        return self._poll(PROBE_TIMEOUT_S)

    def _poll(self, timeout_s: float) -> list[int | None]:
        refs = [w.weight_version.remote() for w in self.workers]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        return [_value_or_none(ref) if ref in ready else None for ref in refs]

    # ------------------------------------------------------------------ work
    def _run_sharded(self, method: str, items: Sequence, per_item: dict[str, Sequence] | None = None,
                     **kwargs) -> list:
        """Call `method` on contiguous shards of `items`, one per worker; results in input order.
        `per_item`: further arguments with one value per item, sharded alongside."""
        per_item = {k: v for k, v in (per_item or {}).items() if v is not None}
        results: list = [None] * len(items)
        pending = list(range(len(items)))
        for _ in range(MAX_RESTARTS_PER_CALL + 1):
            if not pending:
                break
            n = len(self.slots)
            shards = [pending[i * len(pending) // n:(i + 1) * len(pending) // n] for i in range(n)]
            refs = {i: getattr(self.slots[i].actor, method).remote(
                        [items[j] for j in shard], **{k: [v[j] for j in shard] for k, v in per_item.items()}, **kwargs)
                    for i, shard in enumerate(shards) if shard}
            # One deadline for the whole call: a worker that has not answered by then is hung.
            ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=self.rollout.call_timeout_s)
            failed = []
            for i, ref in refs.items():
                outs = _value_or_none(ref) if ref in ready else None
                if outs is None:
                    log.warning("rollout worker died or hung (cluster.rollout.call_timeout_s); re-queueing its "
                                "prompts", extra=fields(slot=i, prompts=len(shards[i]), timed_out=ref not in ready))
                    failed.append(i)
                    continue
                for j, out in zip(shards[i], outs):
                    results[j] = out
            pending = [j for i in failed for j in shards[i]]
            for i in failed:
                self._replace(i)
            if failed:
                self._resync()
        if pending:
            raise RuntimeError(f"{len(pending)} prompts still failed after {MAX_RESTARTS_PER_CALL} worker restarts")
        return results

    @_serialized
    def generate(self, prompts: Sequence, n: int, temperature: float, max_tokens: int, mode: str | None,
                 top_p: float = 1.0, seeds: Sequence[int] | None = None) -> list[RolloutGroup]:
        return self._run_sharded("generate", prompts, per_item={"seeds": seeds}, n=n, temperature=temperature,
                                 max_tokens=max_tokens, mode=mode, top_p=top_p)

    @_serialized
    def beam(self, prompts: Sequence, width: int, prefixes: Sequence[Sequence[int]] | None = None) -> list:
        return self._run_sharded("beam", prompts, per_item={"prefixes": prefixes}, width=width)

    @_serialized
    def shutdown(self) -> None:
        for slot in self.slots:
            self._kill_quietly(slot)
        self.slots = []
