"""The reward service: SID rewards behind a ZMQ ROUTER socket, one Ray actor per replica.

Wire format: rl_system/reward/wire.py (a header frame with the token, then a msgpack body). A reply
to a scoring request:
  {"id": int, "ok": true, "format_ok": [bool], "codes": [[int] * D] (-1 = none), "item": [item id or -1],
   "exact": [bool], "lcp": [int], "residual": [float], "binary": [float], "beam": [float] | null}
and, from a replica with a teacher, "teacher_logp" and "teacher_rank"; from one with the items'
popularity, "novelty", "tail" and "share" (rl_system.reward.objectives.popularity_fields).
A request that cannot be served gets an error reply and the service keeps serving; a frame over
the size limit (wire.frame_limit) is not read at all: ZMQ drops the connection that sent it.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import zmq

from cluster.logs import fields
from cluster.placement import Unplaceable, get_started
from indexing.segments import Popularity
from indexing.sid import SidIndex
from rl_system.reward import functions as rewards
from rl_system.reward import wire
from rl_system.reward.scoring import RequestError, RewardScorer
from rl_system.reward.teacher import Teacher

log = logging.getLogger(__name__)


POLL_MS = 100  # how often the serving loop checks for a stop request
# Messages a connection may queue while the serving loop is busy; past it ZMQ stops reading that
# peer's socket, so a flood from anyone who can connect costs a replica one message, not thousands.
RECEIVE_HWM = 1
START_TIMEOUT_S = 300.0  # cluster.reward.start_timeout_s's default


NODE_ADDRESS = "node"  # cluster.reward.host meaning "the address of the node this replica runs on"
WILDCARDS = ("0.0.0.0", "*")  # bound on every interface: advertised as the node's address


def serving_socket(ctx: zmq.Context, max_request_bytes: int) -> zmq.Socket:
    """A replica's ROUTER socket: a frame over the limit drops its connection unread (ZMQ_MAXMSGSIZE),
    and each connection queues at most RECEIVE_HWM messages, whatever its peer sends."""
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, wire.frame_limit(max_request_bytes))
    sock.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
    return sock


def _node_address() -> str:
    import ray

    return ray.util.get_node_ip_address()


class RewardServer:
    """Serves a RewardScorer on a ROUTER socket from a background thread.

    Used as a Ray actor (`RewardService`); the thread keeps the actor's own methods (endpoint,
    stats, stop) answerable while it serves.
    """

    def __init__(self, index_path: str, mode: rewards.Mode = "direct", beta: float = 0.5,
                 semantic_levels: int | None = None, host: str = "127.0.0.1", token: str | None = None,
                 max_request_bytes: int = wire.MAX_REQUEST_BYTES, teacher: tuple[str, str] | None = None,
                 popularity: Popularity | None = None):
        """`teacher`: (folder of a trained SASRec, the data set's name), loaded before serving starts;
        `popularity`: the items' training interactions, which the objective rewards read."""
        wire.check_token(host, token)
        index = SidIndex.load(index_path)
        model = None if teacher is None else Teacher(teacher[0], index.num_items, teacher[1])
        self.scorer = RewardScorer(index, mode=mode, beta=beta, semantic_levels=semantic_levels, teacher=model,
                                   popularity=popularity)
        self.teacher = None if model is None else model.folder
        self._token = token.encode() if token else None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._endpoint: str | None = None
        self._bind_error: BaseException | None = None
        self._stats = {"requests": 0, "completions": 0, "errors": 0, "rejected": 0, "busy_s": 0.0}
        self._thread = threading.Thread(target=self._serve, args=(host, max_request_bytes), name="reward-service",
                                        daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._bind_error is not None:
            raise RuntimeError(f"reward service could not bind on {host}: {self._bind_error}") from self._bind_error
        log.info("reward service ready", extra=fields(endpoint=self._endpoint, depth=self.scorer.depth,
                                                      semantic_levels=self.scorer.semantic_levels, mode=mode,
                                                      token="on" if token else "off", teacher=self.teacher))

    def endpoint(self) -> str:
        return self._endpoint

    def pid(self) -> int:
        """The serving process, for operators (and fault tests) that need to signal it."""
        return os.getpid()

    def stats(self) -> dict[str, float]:
        return dict(self._stats)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _serve(self, host: str, max_request_bytes: int) -> None:
        if host == NODE_ADDRESS:  # resolved here: the replica's node, not the driver's
            host = _node_address()
        sock = serving_socket(zmq.Context.instance(), max_request_bytes)
        try:
            port = sock.bind_to_random_port(f"tcp://{host}")
            # Clients connect to the endpoint: a wildcard names no host they could reach from another node.
            self._endpoint = f"tcp://{_node_address() if host in WILDCARDS else host}:{port}"
        except zmq.ZMQError as exc:
            self._bind_error = exc
            sock.close()
            return
        finally:
            self._ready.set()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not poller.poll(POLL_MS):
                    continue
                envelope, parts = wire.split_envelope(sock.recv_multipart())
                start = time.perf_counter()
                reply = self._reply_to(parts)
                self._stats["busy_s"] += time.perf_counter() - start
                sock.send_multipart([*envelope, msgpack.packb(reply, use_bin_type=True)])
        finally:
            sock.close()

    def _reply_to(self, parts: list[bytes]) -> dict[str, Any]:
        try:
            request_id, request = wire.check_request(parts, self._token)
        except wire.FrameError as exc:
            self._stats["rejected" if exc.code == wire.BAD_TOKEN else "errors"] += 1
            return {"id": exc.request_id, "ok": False, "code": exc.code, "error": str(exc)}
        if isinstance(request, dict) and request.get("ping") is True:
            return {"id": request_id, "ok": True, "pong": True, "teacher": self.teacher}
        try:
            reply = self.scorer.handle(request)
        except RequestError as exc:
            self._stats["errors"] += 1
            return {"id": request_id, "ok": False, "code": wire.BAD_REQUEST, "error": f"{wire.BAD_REQUEST}: {exc}"}
        except Exception as exc:  # a bug must not take the service down; the client sees it
            log.exception("reward request failed")
            self._stats["errors"] += 1
            return {"id": request_id, "ok": False, "code": wire.INTERNAL,
                    "error": f"{wire.INTERNAL}: {type(exc).__name__}: {exc}"}
        self._stats["requests"] += 1
        self._stats["completions"] += len(request["completions"])
        reply["id"] = request_id
        return reply


def reward_service_actor(num_cpus: float = 0):
    """The Ray actor class. It takes no CPU slot by default: it scores in microseconds per completion
    and must not starve rollout workers and learners of Ray's CPU budget on small machines."""
    import ray

    return ray.remote(num_cpus=num_cpus)(RewardServer)


def start_replicas(index_path: str | Path, replicas: int, mode: rewards.Mode = "direct", beta: float = 0.5,
                   semantic_levels: int | None = None, host: str = "127.0.0.1", token: str | None = None,
                   max_request_bytes: int = wire.MAX_REQUEST_BYTES, num_cpus: float = 0,
                   resources: dict[str, float] | None = None, teacher: tuple[str, str] | None = None,
                   popularity: Popularity | None = None,
                   start_timeout_s: float = START_TIMEOUT_S) -> tuple[list[Any], list[str]]:
    """Start M replica actors, spread over the nodes that have `resources` (custom Ray resources,
    cluster.reward.resources); returns (handles, endpoints). Replicas not serving within
    `start_timeout_s` (no node has the resources, or none has room) are killed and Unplaceable raised."""
    import ray

    wire.check_token(host, token)  # here too, so the driver gets the message rather than a dead actor
    actor_cls = reward_service_actor(num_cpus).options(resources=resources or {}, scheduling_strategy="SPREAD")
    shared = None if popularity is None else ray.put(popularity)  # one copy in the object store for every replica
    actors = [actor_cls.remote(str(index_path), mode, beta, semantic_levels, host, token, max_request_bytes, teacher,
                               shared) for _ in range(replicas)]
    endpoints = get_started(actors, [a.endpoint.remote() for a in actors], start_timeout_s, lambda: Unplaceable(
        f"{replicas} reward replica(s) needing {resources or 'no custom resources'} did not start within "
        f"{start_timeout_s:.0f}s (cluster.reward.start_timeout_s); the cluster has {ray.available_resources()} free"))
    return actors, endpoints
