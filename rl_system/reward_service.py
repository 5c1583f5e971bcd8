"""Reward service: SID rewards behind a ZMQ ROUTER socket, one Ray actor per replica.

Wire protocol (msgpack maps, never pickle):
  request  {"id": int, "token": str?, "mode": "direct"|"reasoning"?, "completions": [str],
            "targets": [item id], "beams": [[SID str] * B]?}
  reply    {"id": int, "ok": true, "format_ok": [bool], "codes": [[int] * D] (-1 = none),
            "item": [item id or -1], "exact": [bool], "lcp": [int], "residual": [float],
            "binary": [float], "beam": [float] | null}
       or  {"id": int | null, "ok": false, "error": str}
A DEALER client sends one frame; a REQ client's empty delimiter frame is accepted too. A request
that cannot be served gets an error reply and the service keeps serving.
"""
from __future__ import annotations

import hmac
import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import msgpack
import numpy as np
import zmq

from cluster.logs import fields
from indexing.sid import SidIndex
from rl_system import rewards

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 256 << 20  # a request above this is refused by ZMQ before it is unpacked
POLL_MS = 100  # how often the serving loop checks for a stop request


class RewardServiceError(RuntimeError):
    """The service answered with an error."""


class RewardTimeout(TimeoutError):
    """No reply within the client's timeout."""


class RequestError(ValueError):
    """A request the service cannot serve; its message goes back to the client."""


@dataclass(frozen=True)
class RewardReply:
    """Per-completion results as numpy arrays (the client side of a reply)."""

    format_ok: np.ndarray
    codes: np.ndarray
    item: np.ndarray
    exact: np.ndarray
    lcp: np.ndarray
    residual: np.ndarray
    binary: np.ndarray
    beam: np.ndarray | None

    def __len__(self) -> int:
        return len(self.residual)

    @classmethod
    def from_wire(cls, msg: dict[str, Any]) -> "RewardReply":
        beam = msg.get("beam")
        return cls(format_ok=np.asarray(msg["format_ok"], dtype=bool), codes=np.asarray(msg["codes"], dtype=np.int64),
                   item=np.asarray(msg["item"], dtype=np.int64), exact=np.asarray(msg["exact"], dtype=bool),
                   lcp=np.asarray(msg["lcp"], dtype=np.int64), residual=np.asarray(msg["residual"], dtype=np.float64),
                   binary=np.asarray(msg["binary"], dtype=np.float64),
                   beam=None if beam is None else np.asarray(beam, dtype=np.float64))

    @classmethod
    def concat(cls, parts: Sequence["RewardReply"]) -> "RewardReply":
        beams = [p.beam for p in parts]
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                     ("format_ok", "codes", "item", "exact", "lcp", "residual", "binary")),
                   beam=None if any(b is None for b in beams) else np.concatenate(beams))


class RewardScorer:
    """The in-process scorer the service wraps: item ids -> target codes, completions -> rewards."""

    def __init__(self, index: SidIndex, mode: rewards.Mode = "direct", beta: float = 0.5,
                 semantic_levels: int | None = None):
        self.index = index
        self.mode = mode
        self.beta = beta
        items = np.array(index.items(), dtype=np.int64)
        codes = index.as_array()
        self.depth = index.depth
        self.semantic_levels = semantic_levels if semantic_levels is not None else rewards.semantic_levels(codes)
        # Dense item -> codes table (-1 rows for ids the index lacks) so targets resolve in one take().
        self._target_table = np.full((int(items.max()) + 1, self.depth), -1, dtype=np.int64)
        self._target_table[items] = codes
        # Generated SID -> item by binary search over the index rows viewed as fixed-size byte keys.
        keys = _row_keys(codes)
        order = np.argsort(keys)
        self._sorted_keys = keys[order]
        self._sorted_items = items[order]

    @classmethod
    def from_file(cls, index_path: str | Path, **kwargs) -> "RewardScorer":
        return cls(SidIndex.load(index_path), **kwargs)

    def target_codes(self, targets: Sequence[int]) -> np.ndarray:
        targets = np.asarray(targets, dtype=np.int64)
        if targets.ndim != 1:
            raise RequestError(f"'targets' must be a flat list of item ids, got shape {targets.shape}")
        known = (targets >= 0) & (targets < len(self._target_table))
        codes = np.full((len(targets), self.depth), -1, dtype=np.int64)
        codes[known] = self._target_table[targets[known]]
        missing = (codes[:, 0] < 0)
        if missing.any():
            bad = targets[missing][:5].tolist()
            raise RequestError(f"'targets': item ids {bad} have no SID in the index ({self.index.num_items} items)")
        return codes

    def score(self, completions: Sequence[str], targets: Sequence[int], beams: Sequence[Sequence[str]] | None = None,
              mode: rewards.Mode | None = None) -> tuple[rewards.ParsedBatch, rewards.RewardBatch]:
        if len(completions) != len(targets):
            raise RequestError(f"{len(completions)} completions but {len(targets)} targets; need one target each")
        parsed = rewards.parse_completions(completions, mode or self.mode, self.depth)
        beam_codes = None
        if beams is not None:
            widths = {len(b) for b in beams}
            if len(beams) != len(completions) or len(widths) != 1:
                raise RequestError(f"'beams' must hold the same number of candidates for each of the "
                                   f"{len(completions)} completions, got {len(beams)} lists of widths {sorted(widths)}")
            width = widths.pop()
            flat = rewards.parse_sids([s for cands in beams for s in cands], self.depth)
            beam_codes = flat.codes.reshape(len(completions), width, self.depth)
        result = rewards.score(parsed, self.target_codes(targets), self.semantic_levels, self.beta, beam_codes)
        return parsed, result

    def items_of(self, codes: np.ndarray) -> np.ndarray:
        """The item each code row [N, D] names, -1 for malformed (-1 rows) or unknown SIDs."""
        queries = _row_keys(codes)
        pos = np.searchsorted(self._sorted_keys, queries).clip(max=len(self._sorted_keys) - 1)
        return np.where(self._sorted_keys[pos] == queries, self._sorted_items[pos], -1)

    def handle(self, request: Any) -> dict[str, Any]:
        """Serve one decoded request map; raises RequestError for anything malformed."""
        if not isinstance(request, dict):
            raise RequestError(f"a request must be a msgpack map, got {type(request).__name__}")
        for key, kind in (("completions", list), ("targets", list)):
            if not isinstance(request.get(key), kind):
                raise RequestError(f"request key '{key}' must be a list, got {type(request.get(key)).__name__}")
        if not all(isinstance(c, str) for c in request["completions"]):
            raise RequestError("request key 'completions' must be a list of strings")
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in request["targets"]):
            raise RequestError("request key 'targets' must be a list of integer item ids")
        mode = request.get("mode")
        if mode not in (None, "direct", "reasoning"):
            raise RequestError(f"request key 'mode' must be 'direct' or 'reasoning', got {mode!r}")
        beams = request.get("beams")
        if beams is not None and not (isinstance(beams, list) and all(
                isinstance(b, list) and all(isinstance(s, str) for s in b) for b in beams)):
            raise RequestError("request key 'beams' must be a list of lists of SID strings")
        parsed, out = self.score(request["completions"], request["targets"], beams, mode)
        return {"ok": True, "format_ok": out.format_ok.tolist(), "codes": parsed.codes.tolist(),
                "item": self.items_of(parsed.codes).tolist(), "exact": out.exact.tolist(), "lcp": out.lcp.tolist(),
                "residual": out.residual.tolist(), "binary": out.binary.tolist(),
                "beam": None if out.beam is None else out.beam.tolist()}


def _row_keys(codes: np.ndarray) -> np.ndarray:
    """Each int64 row as one opaque fixed-size value, so rows sort and compare as scalars."""
    codes = np.ascontiguousarray(codes, dtype=np.int64)
    return codes.view(np.dtype((np.void, 8 * codes.shape[1]))).ravel()


class RewardServer:
    """Serves a RewardScorer on a ROUTER socket from a background thread.

    Used as a Ray actor (`RewardService`); the thread keeps the actor's own methods (endpoint,
    stats, stop) answerable while it serves.
    """

    def __init__(self, index_path: str, mode: rewards.Mode = "direct", beta: float = 0.5,
                 semantic_levels: int | None = None, host: str = "127.0.0.1", token: str | None = None):
        self.scorer = RewardScorer.from_file(index_path, mode=mode, beta=beta, semantic_levels=semantic_levels)
        self._token = token.encode() if token else None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._endpoint: str | None = None
        self._bind_error: BaseException | None = None
        self._stats = {"requests": 0, "completions": 0, "errors": 0, "rejected": 0, "busy_s": 0.0}
        self._thread = threading.Thread(target=self._serve, args=(host,), name="reward-service", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._bind_error is not None:
            raise RuntimeError(f"reward service could not bind on {host}: {self._bind_error}") from self._bind_error
        log.info("reward service ready", extra=fields(endpoint=self._endpoint, depth=self.scorer.depth,
                                                      semantic_levels=self.scorer.semantic_levels, mode=mode,
                                                      token="on" if token else "off"))

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

    def _serve(self, host: str) -> None:
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        try:
            port = sock.bind_to_random_port(f"tcp://{host}")
            self._endpoint = f"tcp://{host}:{port}"
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
                frames = sock.recv_multipart()
                envelope, payload = frames[:-1], frames[-1]
                if not envelope:
                    continue  # a frame without a sender identity cannot be answered
                start = time.perf_counter()
                reply = self._reply_to(payload)
                self._stats["busy_s"] += time.perf_counter() - start
                sock.send_multipart([*envelope, msgpack.packb(reply, use_bin_type=True)])
        finally:
            sock.close()

    def _reply_to(self, payload: bytes) -> dict[str, Any]:
        request_id = None
        try:
            request = msgpack.unpackb(payload, raw=False, strict_map_key=True)
        except Exception as exc:  # any undecodable bytes: answer, never die
            self._stats["errors"] += 1
            return {"id": None, "ok": False, "error": f"request is not valid msgpack: {exc}"}
        if isinstance(request, dict):
            request_id = request.get("id")
        if self._token is not None:
            given = request.get("token") if isinstance(request, dict) else None
            if not isinstance(given, str) or not hmac.compare_digest(given.encode(), self._token):
                self._stats["rejected"] += 1
                return {"id": request_id, "ok": False, "error": "unauthorized: missing or wrong reward service token"}
        try:
            reply = self.scorer.handle(request)
        except RequestError as exc:
            self._stats["errors"] += 1
            return {"id": request_id, "ok": False, "error": str(exc)}
        except Exception as exc:  # a bug must not take the service down; the client sees it
            log.exception("reward request failed")
            self._stats["errors"] += 1
            return {"id": request_id, "ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}
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
                   num_cpus: float = 0, scheduling_strategies: Sequence[Any] | None = None) -> tuple[list[Any], list[str]]:
    """Start M replica actors (optionally one placement-group strategy each); returns (handles, endpoints)."""
    import ray

    actor_cls = reward_service_actor(num_cpus)
    if scheduling_strategies is not None and len(scheduling_strategies) != replicas:
        raise ValueError(f"{len(scheduling_strategies)} scheduling strategies for {replicas} replicas")
    actors = [(actor_cls.options(scheduling_strategy=scheduling_strategies[r]) if scheduling_strategies else actor_cls)
              .remote(str(index_path), mode, beta, semantic_levels, host, token) for r in range(replicas)]
    endpoints = ray.get([a.endpoint.remote() for a in actors])
    return actors, endpoints


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
