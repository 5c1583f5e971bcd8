"""The driver's handle on the reward replicas: scores through ZMQ and replaces a dead or hung replica.

A replica that died, or hangs with its process alive, leaves its requests unanswered, so one times
out (cluster.reward.timeout_s). The pool then pings every replica through its ZMQ socket (the
serving loop itself, not the actor, which can answer while that loop is stuck), kills and restarts
those that do not answer, reconnects the client and scores the same batch again, once: the step
completes and nothing is scored twice (the failed request's results were never returned).
"""
from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Sequence

import ray

from cluster.logs import fields
from cluster.spec import JobSpec
from indexing.segments import Popularity
from rl_system.messages import RewardReply
from rl_system.reward import wire
from rl_system.reward.client import RewardClient, RewardTimeout
from rl_system.reward.server import NODE_ADDRESS, START_TIMEOUT_S, start_replicas

log = logging.getLogger(__name__)


def bind_host(requested: str, alive_nodes: int) -> str:
    """cluster.reward.host as a replica binds it: "auto" is loopback while the whole job is on one
    node, else each replica's own node address (other nodes' drivers and workers must reach it)."""
    if requested != "auto":
        return requested
    return NODE_ADDRESS if alive_nodes > 1 else "127.0.0.1"


def _alive_nodes() -> int:
    return sum(1 for node in ray.nodes() if node["Alive"])


class RewardPool:
    def __init__(self, index_path: str | Path, replicas: int, mode: str = "direct", beta: float = 0.5,
                 host: str = "127.0.0.1", token: str | None = None, timeout_s: float = 30.0,
                 max_request_bytes: int = wire.MAX_REQUEST_BYTES, resources: dict[str, float] | None = None,
                 teacher: tuple[str, str] | None = None, popularity: Popularity | None = None,
                 start_timeout_s: float = START_TIMEOUT_S):
        """`host`: cluster.reward.host, resolved (`bind_host`) whenever replicas start, so that a
        replacement started after the cluster grew binds an address the other nodes reach."""
        if token is None and (host == "auto" or not wire.is_loopback(host)):
            # "auto" may bind off loopback at any restart; the driver hands the token to every replica and client.
            token = secrets.token_hex(16)
            log.info("reward service may bind off loopback: a token was generated for this run", extra=fields(host=host))
        self._start = dict(index_path=index_path, mode=mode, beta=beta, token=token, max_request_bytes=max_request_bytes,
                           resources=resources, teacher=teacher, popularity=popularity, start_timeout_s=start_timeout_s)
        self.host, self.token, self.timeout_s = host, token, timeout_s
        self.actors, self.endpoints = self._start_replicas(replicas)
        self.client = self._connect()
        self.replaced = 0

    @classmethod
    def from_spec(cls, spec: JobSpec, index_path: str | Path, popularity: Popularity | None = None) -> "RewardPool":
        """`popularity`: the items' training interactions, handed to the replicas when the spec's
        objective rewards read them."""
        r = spec.cluster.reward
        teacher = None if spec.rl.teacher is None else (spec.rl.teacher.path, spec.data.name)
        return cls(index_path, r.replicas, spec.rl.mode, spec.rl.beta, r.host, r.token, r.timeout_s,
                   int(r.max_request_mib * (1 << 20)), r.resources, teacher,
                   popularity if spec.rl.objectives.needs_popularity else None, r.start_timeout_s)

    def _start_replicas(self, count: int) -> tuple[list, list[str]]:
        host = bind_host(self.host, _alive_nodes())
        log.info("starting reward replicas", extra=fields(replicas=count, host=host))
        return start_replicas(replicas=count, host=host, **self._start)

    def _connect(self) -> RewardClient:
        return RewardClient(self.endpoints, token=self.token, timeout_s=self.timeout_s,
                            max_request_bytes=self._start["max_request_bytes"])

    def _replace_unresponsive(self) -> int:
        lost = [i for i, answered in enumerate(self.client.ping()) if not answered]
        if lost:
            for i in lost:
                ray.kill(self.actors[i])  # a hung replica would otherwise keep its process, port and memory
            fresh, endpoints = self._start_replicas(len(lost))
            for i, actor, endpoint in zip(lost, fresh, endpoints):
                self.actors[i], self.endpoints[i] = actor, endpoint
            self.client.close()
            self.client = self._connect()
            self.replaced += len(lost)
            log.warning("reward replicas replaced", extra=fields(replicas=lost, replaced_total=self.replaced))
        return len(lost)

    def score(self, completions: Sequence[str], targets: Sequence[int], beams=None, mode: str | None = None,
              histories: Sequence[Sequence[int]] | None = None) -> RewardReply:
        try:
            return self.client.score(completions, targets, beams=beams, mode=mode, histories=histories)
        except RewardTimeout:
            if not self._replace_unresponsive():
                raise
            return self.client.score(completions, targets, beams=beams, mode=mode, histories=histories)

    def shutdown(self) -> None:
        self.client.close()
        for actor in self.actors:
            ray.kill(actor)
