"""The driver's side of the reward service: a DEALER socket per replica, msgpack requests, replies as `RewardReply`."""
from __future__ import annotations

import itertools
import time
from typing import Any, Sequence

import msgpack
import numpy as np
import zmq

from rl_system.messages import RewardReply
from rl_system.reward import functions as rewards


class RewardServiceError(RuntimeError):
    """The service answered with an error."""


class RewardTimeout(TimeoutError):
    """No reply within the client's timeout."""


class RewardClient:
    """DEALER client over M replicas; a batch is split across replicas and scored in parallel.

    Not thread-safe (ZMQ sockets belong to one thread); make one client per thread.
    """

    def __init__(self, endpoints: Sequence[str], token: str | None = None, timeout_s: float = 30.0,
                 min_chunk: int = 256):
        if not endpoints:
            raise ValueError("RewardClient needs at least one endpoint")
        self.endpoints = list(endpoints)
        self.token = token
        self.timeout_s = timeout_s
        self.min_chunk = min_chunk
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

    def send_raw(self, replica: int, payload: bytes) -> dict[str, Any]:
        """Send raw bytes to one replica and wait for the reply (tests and diagnostics)."""
        self._socks[replica].send(payload)
        return self._receive(replica, None)

    def _receive(self, replica: int, request_id: int | None) -> dict[str, Any]:
        sock = self._socks[replica]
        deadline = time.monotonic() + self.timeout_s
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0 or not sock.poll(left_ms):
                raise RewardTimeout(f"no reply from reward service {self.endpoints[replica]} within "
                                    f"{self.timeout_s:.1f}s (is it running and reachable?)")
            frames = sock.recv_multipart()
            msg = msgpack.unpackb(frames[-1], raw=False)
            # Replies to requests that timed out earlier may still arrive; they are skipped.
            if request_id is None or msg.get("id") == request_id:
                return msg

    def score(self, completions: Sequence[str], targets: Sequence[int], beams: Sequence[Sequence[str]] | None = None,
              mode: rewards.Mode | None = None) -> RewardReply:
        n = len(completions)
        chunks = max(1, min(len(self._socks), n // self.min_chunk))
        bounds = np.linspace(0, n, chunks + 1).astype(int)
        sent = []
        for c in range(chunks):
            lo, hi = bounds[c], bounds[c + 1]
            replica = (self._next + c) % len(self._socks)
            request_id = next(self._ids)
            request = {"id": request_id, "completions": list(completions[lo:hi]),
                       "targets": [int(t) for t in targets[lo:hi]]}
            if self.token is not None:
                request["token"] = self.token
            if mode is not None:
                request["mode"] = mode
            if beams is not None:
                request["beams"] = [list(b) for b in beams[lo:hi]]
            self._socks[replica].send(msgpack.packb(request, use_bin_type=True))
            sent.append((replica, request_id))
        self._next = (self._next + chunks) % len(self._socks)
        parts = []
        for replica, request_id in sent:
            msg = self._receive(replica, request_id)
            if not msg.get("ok"):
                raise RewardServiceError(f"reward service {self.endpoints[replica]}: {msg.get('error')}")
            parts.append(RewardReply.from_wire(msg))
        return parts[0] if len(parts) == 1 else RewardReply.concat(parts)
