"""The driver's side of the reward service: a DEALER socket per replica, msgpack requests, replies as `RewardReply`."""
from __future__ import annotations

import itertools
import time
from typing import Any, Sequence

import msgpack
import numpy as np
import zmq

from cluster.errors import GreamError
from rl_system.messages import RewardReply
from rl_system.reward import functions as rewards
from rl_system.reward import wire


class RewardServiceError(RuntimeError):
    """The service answered with an error."""


class RewardUnauthorized(RewardServiceError, GreamError):
    """The service refused the token: cluster.reward.token differs between the driver and the replicas."""


class RewardRequestTooLarge(RewardServiceError, GreamError):
    """A request over the service's cluster.reward.max_request_mib, refused before it is sent: the
    replica's socket would drop the connection without a reply."""


_RAISES = {wire.BAD_TOKEN: RewardUnauthorized}


class RewardTimeout(TimeoutError):
    """No reply within the client's timeout."""


class RewardClient:
    """DEALER client over M replicas; a batch is split across replicas and scored in parallel.

    Not thread-safe (ZMQ sockets belong to one thread); make one client per thread.
    """

    def __init__(self, endpoints: Sequence[str], token: str | None = None, timeout_s: float = 30.0,
                 min_chunk: int = 256, max_request_bytes: int = wire.MAX_REQUEST_BYTES):
        if not endpoints:
            raise ValueError("RewardClient needs at least one endpoint")
        self.endpoints = list(endpoints)
        self.token = token
        self.timeout_s = timeout_s
        self.min_chunk = min_chunk
        self.max_request_bytes = max_request_bytes
        self._ctx = zmq.Context.instance()
        self._socks = []
        for ep in self.endpoints:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(ep)
            self._socks.append(sock)
        self._ids = itertools.count(1)
        self._next = 0  # round-robin start

    def close(self) -> None:
        for sock in self._socks:
            sock.close()
        self._socks = []

    def __enter__(self) -> "RewardClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send_raw(self, replica: int, frames: Sequence[bytes]) -> dict[str, Any]:
        """Send raw frames to one replica and wait for the reply (tests and diagnostics)."""
        self._socks[replica].send_multipart(frames)
        return self._receive(replica, None)

    def ping(self) -> list[bool]:
        """Which replicas' serving loops answer within the timeout: neither a dead nor a hung one does."""
        sent = []
        for sock in self._socks:
            sent.append(next(self._ids))
            sock.send_multipart(wire.pack_request(sent[-1], self.token, {"ping": True}))
        deadline = time.monotonic() + self.timeout_s  # one wait for all, not one per replica
        answered = []
        for replica, request_id in enumerate(sent):
            try:
                self._receive(replica, request_id, deadline)
            except RewardTimeout:
                answered.append(False)
            else:
                answered.append(True)
        return answered

    def _receive(self, replica: int, request_id: int | None, deadline: float | None = None) -> dict[str, Any]:
        sock = self._socks[replica]
        deadline = deadline or time.monotonic() + self.timeout_s
        while True:
            # Past the deadline, still look once: a reply may have come while another replica was awaited.
            left_ms = max(0, int((deadline - time.monotonic()) * 1000))
            if not sock.poll(left_ms):
                raise RewardTimeout(f"no reply from reward service {self.endpoints[replica]} within "
                                    f"{self.timeout_s:.1f}s (is it running and reachable?)")
            frames = sock.recv_multipart()
            msg = msgpack.unpackb(frames[-1], raw=False)
            # Replies to requests that timed out earlier may still arrive; they are skipped.
            if request_id is None or msg.get("id") == request_id:
                return msg

    def score(self, completions: Sequence[str], targets: Sequence[int], beams: Sequence[Sequence[str]] | None = None,
              mode: rewards.Mode | None = None, histories: Sequence[Sequence[int]] | None = None) -> RewardReply:
        n = len(completions)
        chunks = max(1, min(len(self._socks), n // self.min_chunk))
        bounds = np.linspace(0, n, chunks + 1).astype(int)
        requests = []  # all packed and checked before any is sent
        for c in range(chunks):
            lo, hi = bounds[c], bounds[c + 1]
            request = {"completions": list(completions[lo:hi]), "targets": [int(t) for t in targets[lo:hi]]}
            if mode is not None:
                request["mode"] = mode
            if beams is not None:
                request["beams"] = [list(b) for b in beams[lo:hi]]
            if histories is not None:  # for a replica with a teacher model
                request["histories"] = [[int(i) for i in h] for h in histories[lo:hi]]
            request_id = next(self._ids)
            frames = wire.pack_request(request_id, self.token, request)
            if len(frames[1]) > self.max_request_bytes:
                raise RewardRequestTooLarge(f"a reward request of {hi - lo} completions packs into {len(frames[1])} "
                                            f"bytes, over the limit of {self.max_request_bytes} "
                                            "(cluster.reward.max_request_mib); raise it or score fewer at once")
            requests.append((request_id, frames))
        sent = []
        for c, (request_id, frames) in enumerate(requests):
            replica = (self._next + c) % len(self._socks)
            self._socks[replica].send_multipart(frames)
            sent.append((replica, request_id))
        self._next = (self._next + chunks) % len(self._socks)
        parts = []
        for replica, request_id in sent:
            msg = self._receive(replica, request_id)
            if not msg.get("ok"):
                error = _RAISES.get(msg.get("code"), RewardServiceError)
                raise error(f"reward service {self.endpoints[replica]}: {msg.get('error')}")
            parts.append(RewardReply.from_wire(msg))
        return parts[0] if len(parts) == 1 else RewardReply.concat(parts)
