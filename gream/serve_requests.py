"""`gream serve`'s request side: the catalogue a history is written in, the parsing of a /recommend
body (each error names its field), and the batcher that turns concurrent requests into few engine
calls.

The batcher thread takes the first waiting request, gathers whatever else arrives within
`window_s` (up to `max_batch`), and answers each mode's group with one call; requests that arrive
while a call runs wait in the queue and form the next batch, so N concurrent clients cost about
N / batch engine calls, not N.

The queue is bounded (`max_queue`: a full one refuses at once, Overloaded, which the server answers
503) and a client waits at most `timeout_s` (TimeoutError, answered 504; a request not yet started
is then dropped from its batch). A batch whose call raises is answered again one request at a
time, so a request that fails fails alone.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from cluster.logs import fields
from gream.http_guard import HttpLimits
from indexing.dataset import load_items
from indexing.sid import SidIndex

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # the server reads no more (a history is a few hundred bytes)
MAX_INT_DIGITS = 20  # item ids and k; int() of a longer digit string costs time quadratic in its length
FIELDS = ("history", "k", "mode")


class RequestError(ValueError):
    """A request the server answers with HTTP 400; the message names the field."""


class Overloaded(RuntimeError):
    """The batcher's queue is full: the server answers 503 with Retry-After."""


class Catalogue:
    """The items a request may name: every item with a SID, by id or by exact title (any case)."""

    def __init__(self, index: SidIndex, titles: dict[int, str]):
        self.index, self.titles = index, titles
        self._items = set(index.items())
        self._by_title: dict[str, list[int]] = {}
        for item, title in titles.items():
            self._by_title.setdefault(title.strip().lower(), []).append(item)

    @classmethod
    def load(cls, index: SidIndex, item_file: Path) -> "Catalogue":
        """`item_file`: the dataset's NAME.item.json (titles); without it items go by id only."""
        texts = load_items(item_file) if item_file.exists() else {}
        known = set(index.items())
        return cls(index, {i: str(t["title"]) for i, t in texts.items() if i in known and t.get("title")})

    def resolve(self, entry: object, where: str) -> int:
        if isinstance(entry, int) and not isinstance(entry, bool):
            if entry not in self._items:
                raise RequestError(f"{where}: unknown item {entry}")
            return entry
        if isinstance(entry, str):
            found = self._by_title.get(entry.strip().lower(), [])
            if len(found) == 1:
                return found[0]
            if found:
                raise RequestError(f"{where}: title {entry!r} names {len(found)} items ({', '.join(map(str, found))}); "
                                   "give the item id")
            raise RequestError(f"{where}: no item has the title {entry!r}")
        raise RequestError(f"{where}: expected an item id (integer) or a title (string), got {type(entry).__name__}")


@dataclass(frozen=True)
class ServeLimits:
    """What one slow or hostile client can hold (gream.http_guard: read, write, connections) and how
    long and deep the answering may back up."""

    http: HttpLimits = HttpLimits()
    answer_s: float = 120.0  # a request's wait for its batch; past it the reply is 504
    max_queue: int = 256  # requests waiting for a batch; past it the reply is 503 with Retry-After

    def __post_init__(self) -> None:
        if self.answer_s <= 0 or self.max_queue < 1:  # a Queue of size 0 would be unbounded
            raise ValueError(f"ServeLimits: answer_s must be positive and max_queue at least 1, got {self}")


DEFAULT_LIMITS = ServeLimits()


@dataclass(frozen=True)
class Request:
    history: tuple[int, ...]
    k: int
    mode: str


def parse_request(body: bytes, catalogue: Catalogue, max_k: int, modes: Sequence[str], max_history: int) -> Request:
    """A /recommend body -> Request; the history keeps its last `max_history` items, as in training."""
    try:
        data = json.loads(body or b"null", parse_int=_short_int)
    except RecursionError:
        raise RequestError("body: JSON nested too deeply; expected an object holding a list") from None
    except RequestError:
        raise
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise RequestError(f"body: invalid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise RequestError(f"body: expected a JSON object with {', '.join(FIELDS)}")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise RequestError(f"{unknown[0]}: unknown field; expected {', '.join(FIELDS)}")
    history = data.get("history")
    if not isinstance(history, list) or not history:
        raise RequestError("history: expected a non-empty list of item ids or titles")
    items = tuple(catalogue.resolve(entry, f"history[{i}]") for i, entry in enumerate(history))
    k = data.get("k", max_k)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= max_k:
        raise RequestError(f"k: expected an integer in 1..{max_k}, got {json.dumps(k)}")
    mode = data.get("mode", "direct")
    if mode not in modes:
        raise RequestError(f"mode: expected one of {', '.join(modes)}, got {json.dumps(mode)}")
    return Request(items[-max_history:], k, mode)


def _short_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise RequestError(f"body: an integer of {len(digits.lstrip('-'))} digits; item ids and k have at most "
                           f"{MAX_INT_DIGITS}")
    return int(digits)


class Batcher:
    """Answers requests in batches on one thread: `answer_batch(mode, requests)` returns one reply
    per request and is called once per mode present in a batch."""

    def __init__(self, answer_batch: Callable[[str, list[Request]], list[dict]], window_s: float = 0.01,
                 max_batch: int = 64, max_queue: int = 256):
        self.answer_batch = answer_batch
        self.window_s, self.max_batch = window_s, max_batch
        self.batches = 0  # engine batches made, one per mode of each gathered batch
        self.served = 0  # requests answered
        self._queue: queue.Queue = queue.Queue(max_queue)
        self._thread = threading.Thread(target=self._loop, name="gream-serve-batcher", daemon=True)
        self._thread.start()

    def submit(self, request: Request, timeout_s: float | None = None) -> dict:
        """The reply to `request`: blocks until its batch is answered, raises what answering raised,
        Overloaded when the queue is full, TimeoutError when `timeout_s` passes first."""
        done: Future = Future()
        try:
            self._queue.put_nowait((request, done))
        except queue.Full:
            raise Overloaded(f"{self._queue.maxsize} requests already wait") from None
        try:
            return done.result(timeout_s)
        except TimeoutError:
            done.cancel()  # succeeds while the request waits: its batch then leaves it out
            raise

    @property
    def queued(self) -> int:
        """Requests waiting for a batch."""
        return self._queue.qsize()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _gather(self, first) -> tuple[list, bool]:
        batch, deadline = [first], time.monotonic() + self.window_s
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _loop(self) -> None:
        while (first := self._queue.get()) is not None:
            batch, closing = self._gather(first)
            by_mode: dict[str, list] = {}
            for request, done in batch:
                if done.set_running_or_notify_cancel():  # False: its client stopped waiting
                    by_mode.setdefault(request.mode, []).append((request, done))
            for mode, group in by_mode.items():
                self._answer(mode, group)
            if closing:
                return

    def _answer(self, mode: str, group: list) -> None:
        start = time.perf_counter()
        try:
            replies = self.answer_batch(mode, [r for r, _ in group])
        except Exception as exc:
            if len(group) > 1:  # which request broke it is unknown: each is asked alone
                log.warning("batch failed; answering its requests one at a time",
                            extra=fields(mode=mode, requests=len(group), error=type(exc).__name__))
                for one in group:
                    self._answer(mode, [one])
                return
            log.exception("request failed", extra=fields(mode=mode))  # its client gets a bare HTTP 500
            group[0][1].set_exception(exc)
            return
        self.batches += 1
        self.served += len(group)
        log.info("batch answered", extra=fields(mode=mode, requests=len(group),
                                                secs=round(time.perf_counter() - start, 3)))
        for (_, done), reply in zip(group, replies):
            done.set_result(reply)
