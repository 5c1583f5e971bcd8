"""`gream serve`'s request side: the catalogue a history is written in, the parsing of a /recommend
body (each error names its field), and the batcher that turns concurrent requests into few engine
calls.

The batcher thread takes the first waiting request, gathers whatever else arrives within
`window_s` (up to `max_batch`), and answers each mode's group with one call; requests that arrive
while a call runs wait in the queue and form the next batch, so N concurrent clients cost about
N / batch engine calls, not N.
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
from indexing.dataset import load_items
from indexing.sid import SidIndex

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # the server reads no more (a history is a few hundred bytes)
FIELDS = ("history", "k", "mode")


class RequestError(ValueError):
    """A request the server answers with HTTP 400; the message names the field."""


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
class Request:
    history: tuple[int, ...]
    k: int
    mode: str


def parse_request(body: bytes, catalogue: Catalogue, max_k: int, modes: Sequence[str], max_history: int) -> Request:
    """A /recommend body -> Request; the history keeps its last `max_history` items, as in training."""
    try:
        data = json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
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


class Batcher:
    """Answers requests in batches on one thread: `answer_batch(mode, requests)` returns one reply
    per request and is called once per mode present in a batch."""

    def __init__(self, answer_batch: Callable[[str, list[Request]], list[dict]], window_s: float = 0.01,
                 max_batch: int = 64):
        self.answer_batch = answer_batch
        self.window_s, self.max_batch = window_s, max_batch
        self.batches = 0  # engine batches made, one per mode of each gathered batch
        self.served = 0  # requests answered
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="gream-serve-batcher", daemon=True)
        self._thread.start()

    def submit(self, request: Request) -> dict:
        """The reply to `request` (blocks until its batch is answered; raises what answering raised)."""
        done: Future = Future()
        self._queue.put((request, done))
        return done.result()

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
                by_mode.setdefault(request.mode, []).append((request, done))
            for mode, group in by_mode.items():
                start = time.perf_counter()
                try:
                    replies = self.answer_batch(mode, [r for r, _ in group])
                except Exception as exc:  # each waiting client gets the failure as an HTTP 500
                    log.exception("batch failed", extra=fields(mode=mode, requests=len(group)))
                    for _, done in group:
                        done.set_exception(exc)
                    continue
                self.batches += 1
                self.served += len(group)
                log.info("batch answered", extra=fields(mode=mode, requests=len(group),
                                                        secs=round(time.perf_counter() - start, 3)))
                for (_, done), reply in zip(group, replies):
                    done.set_result(reply)
            if closing:
                return
