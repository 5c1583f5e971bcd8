"""The driver's handle on the reward replicas: scores through ZMQ and replaces a dead replica.

A replica that died leaves its endpoint unanswered, so a request to it times out. The pool then
asks every replica for its endpoint, restarts those that do not answer, reconnects the client and
scores the same batch again: the step completes and nothing is scored twice (the failed request's
results were never returned).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from cluster.logs import fields
from cluster.spec import JobSpec
from rl_system.messages import RewardReply
from rl_system.reward.client import RewardClient, RewardTimeout
from rl_system.reward.server import start_replicas

log = logging.getLogger(__name__)


class RewardPool:
    def __init__(self, index_path: str | Path, replicas: int, mode: str = "direct", beta: float = 0.5,
                 host: str = "127.0.0.1", token: str | None = None, timeout_s: float = 30.0):
        self._start = dict(index_path=index_path, mode=mode, beta=beta, host=host, token=token)
        self.token, self.timeout_s = token, timeout_s
        self.actors, self.endpoints = start_replicas(replicas=replicas, **self._start)
        self.client = RewardClient(self.endpoints, token=token, timeout_s=timeout_s)
        self.replaced = 0

    @classmethod
    def from_spec(cls, spec: JobSpec, index_path: str | Path) -> "RewardPool":
        r = spec.cluster.reward
        return cls(index_path, r.replicas, spec.rl.mode, spec.rl.beta, r.host, r.token)

    def _alive(self, actor: Any) -> bool:
        try:
            ray.get(actor.endpoint.remote(), timeout=10)
            return True
        except (RayActorError, GetTimeoutError):
            return False

    def _replace_dead(self) -> int:
        dead = [i for i, actor in enumerate(self.actors) if not self._alive(actor)]
        if dead:
            fresh, endpoints = start_replicas(replicas=len(dead), **self._start)
            for i, actor, endpoint in zip(dead, fresh, endpoints):
                self.actors[i], self.endpoints[i] = actor, endpoint
            self.client.close()
            self.client = RewardClient(self.endpoints, token=self.token, timeout_s=self.timeout_s)
            self.replaced += len(dead)
            log.warning("reward replicas replaced", extra=fields(replicas=dead, replaced_total=self.replaced))
        return len(dead)

    def score(self, completions: Sequence[str], targets: Sequence[int], beams=None, mode: str | None = None
              ) -> RewardReply:
        try:
            return self.client.score(completions, targets, beams=beams, mode=mode)
        except RewardTimeout:
            if not self._replace_dead():
                raise
            return self.client.score(completions, targets, beams=beams, mode=mode)

    def shutdown(self) -> None:
        self.client.close()
        for actor in self.actors:
            ray.kill(actor)
