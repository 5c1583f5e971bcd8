"""Optional teacher-LLM rewrite of fused item text (GREAM), cached on disk and resumable.

GREAM has a strong LLM rewrite each item as objective attributes followed by the subjective
experience buyers report, which gives the encoder cleaner, more comparable descriptions. The
teacher is an OpenAI-compatible endpoint (any server speaking `/chat/completions`) or a local
vLLM engine. Every finished batch is appended to a JSONL cache keyed by teacher, prompt and text,
so an interrupted rewrite resumes where it stopped and a re-run costs nothing.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

from tqdm import tqdm

from cluster.device import resolve
from cluster.errors import GreamError
from cluster.spec import JobSpec
from indexing.text import truncate

log = logging.getLogger(__name__)

PROMPT = (
    "Rewrite the product listing below as one paragraph of at most 120 words. First state its "
    "objective attributes (what it is, brand, material, size, function), then the subjective "
    "experience a buyer would have with it. Use only facts from the listing. Reply with the "
    "paragraph only.\n\nListing: {text}"
)


class RewriteError(GreamError, RuntimeError):
    """The teacher could not be reached or answered something unusable (the spec's teacher keys name it)."""


class Teacher(Protocol):
    name: str  # identifies the model in cache keys
    max_tokens: int  # reply budget, read at each complete(): one teacher can serve several prompt kinds

    def complete(self, prompts: list[str]) -> list[str]: ...

    def close(self) -> None: ...  # frees what the teacher holds (a local engine's memory)


class _Deadline:
    """Shuts a request's socket when its time is up: a per-read timeout alone lets an endpoint that
    trickles a byte at a time hold the request for ever."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self.expired = False
        self._timer: threading.Timer | None = None

    def watch(self, sock: socket.socket) -> None:
        self._timer = threading.Timer(max(0.0, self.at - time.monotonic()), self._expire, (sock,))
        self._timer.daemon = True
        self._timer.start()

    def _expire(self, sock: socket.socket) -> None:
        self.expired = True
        with contextlib.suppress(OSError):  # already closed: the request ended as the time ran out
            sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


class _Watched:
    """An http.client connection whose socket its request's _Deadline watches once connected."""

    def __init__(self, *args, deadline: _Deadline, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def connect(self) -> None:
        super().connect()
        self.deadline.watch(self.sock)


class _WatchedHTTP(_Watched, http.client.HTTPConnection):
    pass


class _WatchedHTTPS(_Watched, http.client.HTTPSConnection):
    pass


class _Handlers(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    """Opens each request on a watched connection; a redirect is refused, not followed (urllib would
    send the Authorization header on to whatever host the endpoint names)."""

    def __init__(self, deadline: _Deadline) -> None:
        urllib.request.HTTPHandler.__init__(self)
        urllib.request.HTTPSHandler.__init__(self)
        self.deadline = deadline

    def http_open(self, req):
        return self.do_open(_WatchedHTTP, req, deadline=self.deadline)

    def https_open(self, req):
        return self.do_open(_WatchedHTTPS, req, deadline=self.deadline, context=self._context)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises the 3xx as an HTTPError


class EndpointTeacher:
    """An OpenAI-compatible chat endpoint, e.g. `http://host:8000/v1` (a vLLM or SGLang server).
    `timeout_s` bounds each request whole (connect to last byte); a reply body over
    `max_reply_bytes` is refused."""

    def __init__(self, endpoint: str, model: str, max_tokens: int, timeout_s: float = 120, workers: int = 8,
                 max_reply_bytes: int = 1 << 20) -> None:
        self.url = endpoint.rstrip("/") + "/chat/completions"
        self.model = model
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.workers = workers
        self.max_reply_bytes = max_reply_bytes
        self.name = f"endpoint:{model}"
        self._api_key = os.environ.get("OPENAI_API_KEY")  # sent only when the user set one

    def _fetch(self, req: urllib.request.Request) -> bytes:
        deadline = _Deadline(self.timeout_s)
        opener = urllib.request.build_opener(_Handlers(deadline), _NoRedirect())
        try:
            with opener.open(req, timeout=self.timeout_s) as resp:
                body = resp.read(self.max_reply_bytes + 1)
        except urllib.error.HTTPError as exc:
            where = f" to {exc.headers.get('Location')}, not followed" if 300 <= exc.code < 400 else ""
            raise RewriteError(f"{self.url}: HTTP {exc.code}{where}: "
                               f"{exc.read(300).decode(errors='replace')}") from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            if deadline.expired:
                raise RewriteError(f"{self.url}: no complete reply within {self.timeout_s} s") from exc
            raise RewriteError(f"{self.url}: cannot reach the teacher endpoint ({exc})") from exc
        finally:
            deadline.cancel()
        if deadline.expired:  # the socket was shut as the reply ended: what came may be cut short
            raise RewriteError(f"{self.url}: no complete reply within {self.timeout_s} s")
        if len(body) > self.max_reply_bytes:
            raise RewriteError(f"{self.url}: reply larger than {self.max_reply_bytes} bytes")
        return body

    def _one(self, prompt: str) -> str:
        body = json.dumps({"model": self.model, "max_tokens": self.max_tokens, "temperature": 0,
                           "messages": [{"role": "user", "content": prompt}]}).encode()
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        raw = self._fetch(urllib.request.Request(self.url, data=body, headers=headers, method="POST"))
        try:
            reply = json.loads(raw)
        except RecursionError:
            raise RewriteError(f"{self.url}: reply JSON nested too deeply") from None
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of thousands of digits
            raise RewriteError(f"{self.url}: reply is not JSON text ({exc})") from exc
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise RewriteError(f"{self.url}: reply lacks choices[0].message.content: {str(reply)[:300]}") from None
        if content is None:  # a reply with no text: kept as empty, which the stages count as dropped
            return ""
        if not isinstance(content, str):
            # Refused before the cache: a cached wrong type would fail every later run the same way.
            raise RewriteError(f"{self.url}: choices[0].message.content is {type(content).__name__}, "
                               "expected a string")
        return content

    def complete(self, prompts: list[str]) -> list[str]:
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(self._one, prompts))

    def close(self) -> None:
        pass


class VllmTeacher:
    """A local vLLM engine over a Hugging Face model folder (the engine starts on first use)."""

    def __init__(self, model: str, max_tokens: int, device_type: str, kv_cache_gib: float,
                 gpu_memory_utilization: float) -> None:
        self.model = model
        self.max_tokens = max_tokens
        self.name = f"vllm:{Path(model).name}"
        self._device_type = device_type
        self._kv_cache_gib = kv_cache_gib
        self._gpu_memory_utilization = gpu_memory_utilization
        self._llm = None

    def complete(self, prompts: list[str]) -> list[str]:
        from vllm import LLM, SamplingParams

        if self._llm is None:
            kwargs = {}
            if self._device_type == "cpu":
                # On CPU the KV cache is host memory; vLLM's default share of it fails (DESIGN.md 8).
                os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(self._kv_cache_gib))))
                # torch.compile warm-up takes minutes on a small CPU box; eager mode starts in seconds.
                kwargs["enforce_eager"] = True
            else:
                kwargs["gpu_memory_utilization"] = self._gpu_memory_utilization
            self._llm = LLM(model=self.model, max_model_len=2048, **kwargs)
        params = SamplingParams(max_tokens=self.max_tokens, temperature=0.0)
        outputs = self._llm.chat([[{"role": "user", "content": p}] for p in prompts], params, use_tqdm=False)
        return [o.outputs[0].text for o in outputs]

    def close(self) -> None:
        """Stop the engine now: the stage after the teacher's (SFT) needs the accelerator memory it holds."""
        if self._llm is not None:
            self._llm.llm_engine.engine_core.shutdown()
            self._llm = None


class RewriteCache:
    """Append-only JSONL of {"key", "text"}; a line that is not such a row (cut short by a crash, or
    bytes that are not UTF-8) is ignored on load and its item asked again."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.entries: dict[str, str] = {}
        if self.path.exists():
            for n, line in enumerate(self.path.read_bytes().splitlines(), 1):
                try:
                    row = json.loads(line)
                    key, text = row["key"], row["text"]
                except (ValueError, RecursionError, KeyError, TypeError):
                    key = text = None
                if isinstance(key, str) and isinstance(text, str):
                    self.entries[key] = text
                else:
                    log.warning("%s: line %d unreadable (interrupted write?), will redo that item", self.path, n)

    def add(self, rows: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            for key, text in rows.items():
                f.write(json.dumps({"key": key, "text": text}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.entries.update(rows)


def cache_key(teacher_name: str, text: str) -> str:
    return hashlib.sha256(f"{teacher_name}\0{PROMPT}\0{text}".encode()).hexdigest()


def ask_cached(keys: Sequence[str], prompts: Sequence[str], teacher: Teacher, cache: RewriteCache,
               batch_size: int = 32, desc: str = "teacher") -> int:
    """Send the prompts whose key is not in the cache, in batches, caching every finished batch
    (the raw reply) so an interrupted run loses at most one batch. Returns how many were sent."""
    if len(keys) != len(prompts):
        raise ValueError(f"{len(keys)} cache keys for {len(prompts)} prompts")
    todo = [i for i, k in enumerate(keys) if k not in cache.entries]
    if todo:
        log.info("%s: asking %s for %d replies (%d cached)", desc, teacher.name, len(todo), len(keys) - len(todo))
    for start in tqdm(range(0, len(todo), batch_size), desc=desc, unit="batch", disable=not todo):
        batch = todo[start: start + batch_size]
        replies = teacher.complete([prompts[i] for i in batch])
        if len(replies) != len(batch):
            raise RewriteError(f"{teacher.name}: {len(replies)} replies for {len(batch)} prompts")
        cache.add({keys[i]: r for i, r in zip(batch, replies)})
    return len(todo)


def make_teacher(spec: JobSpec, endpoint: str | None, model: str | None, max_tokens: int, where: str,
                 model_key: str = "model") -> Teacher:
    """The teacher a spec section names: `endpoint` + the model it serves, or else a local vLLM engine
    over the Hugging Face folder `model`. `where` and `model_key` are the spec keys of the section
    and of its model field (`index.rewrite`, `model`), for the error messages."""
    if endpoint:
        if not model:
            raise RewriteError(f"{where}.{model_key} must name the endpoint's model when {where}.endpoint is set")
        return EndpointTeacher(endpoint, model, max_tokens)
    if not model or not Path(model).is_dir():
        raise RewriteError(f"{where}.{model_key} must be a Hugging Face model folder for a local vLLM teacher, "
                           f"got {model!r}")
    cl = spec.cluster.rollout
    return VllmTeacher(model, max_tokens, resolve(spec.cluster.device).device_type,
                       cl.kv_cache_gib, cl.gpu_memory_utilization)


@dataclass
class RewriteResult:
    texts: list[str]
    from_cache: int
    rewritten: int
    kept_original: list[int]  # items whose rewrite came back empty


def rewrite_texts(texts: Sequence[str], teacher: Teacher, cache: RewriteCache, max_chars: int,
                  batch_size: int = 32) -> RewriteResult:
    """Rewritten text per item; cached items are not sent again, each finished batch is cached."""
    keys = [cache_key(teacher.name, t) for t in texts]
    sent = ask_cached(keys, [PROMPT.format(text=t) for t in texts], teacher, cache, batch_size, "rewrite")
    out, kept = [], []
    for i, key in enumerate(keys):
        text = truncate(" ".join(cache.entries[key].split()), max_chars)
        if not text:
            kept.append(i)
            text = texts[i]
        out.append(text)
    if kept:
        log.warning("teacher returned empty rewrites for %d items; their fused text is kept", len(kept))
    return RewriteResult(out, len(texts) - sent, sent, kept)
