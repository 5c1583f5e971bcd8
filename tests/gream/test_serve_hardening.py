"""`gream serve` facing hostile or unlucky clients, over real sockets, with the tiny policy answered
by the torch backend: slow and idle clients dropped, connection and queue caps (503), the answer
deadline (504), a failing request failing alone, hostile JSON, the reasoning-mode check, the token.

Where a test must hold the engine (a full queue, a late answer) or break it (one failing request),
the real Recommender's answer_batch is wrapped: it waits on a gate or raises for one history, then
answers with the model."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from gream.http_guard import HttpLimits
from gream.serve import TOKEN_ENV, RecommendServer
from gream.serve_requests import MAX_INT_DIGITS, ServeLimits
from tests.serve_fixtures import WIDTH, histories, running, torch_recommender

CLIENT_TIMEOUT_S = 20  # a reply that never comes fails the test instead of hanging it


@pytest.fixture(scope="module")
def recommender(tiny_policy, tmp_path_factory):
    return torch_recommender(tmp_path_factory.mktemp("serve-hardening"), tiny_policy)


@pytest.fixture(scope="module")
def history(recommender):
    return histories(recommender, 1)[0]


def call(server, path: str = "/recommend", payload=None, raw: bytes | None = None,
         headers: dict | None = None) -> tuple[int, dict, dict]:
    data = raw if raw is not None else (None if payload is None else json.dumps(payload).encode())
    req = urllib.request.Request(server.url + path, data=data,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=CLIENT_TIMEOUT_S) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), dict(err.headers)


def connect(server) -> socket.socket:
    return socket.create_connection(server.server_address[:2], timeout=CLIENT_TIMEOUT_S)


def until_closed(sock: socket.socket, limit_s: float) -> tuple[bytes, float]:
    """What the server sent before it closed the connection, and seconds from now until it did."""
    start, got = time.monotonic(), b""
    sock.settimeout(limit_s)
    try:
        while chunk := sock.recv(4096):
            got += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open past {limit_s} s")
    return got, time.monotonic() - start


def dribble(sock: socket.socket, byte: bytes, every_s: float, stop: threading.Event) -> threading.Thread:
    """Sends `byte` every `every_s` seconds until stopped or the server hangs up."""
    def loop():
        while not stop.wait(every_s):
            try:
                sock.sendall(byte)
            except OSError:
                return
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def wrapped(recommender, before=None):
    """A copy of `recommender` whose answer_batch runs `before(mode, requests)` first; returns it and
    the list of batch sizes it was called with."""
    copy, calls = dataclasses.replace(recommender), []
    real = copy.answer_batch

    def answer_batch(mode, requests):
        calls.append(len(requests))
        if before is not None:
            before(mode, requests)
        return real(mode, requests)
    copy.answer_batch = answer_batch
    return copy, calls


def wait_for(predicate, limit_s: float = 10.0) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_idle_and_trickling_clients_are_dropped_at_the_read_deadline(recommender, history):
    read_s = 1.0
    with running(RecommendServer(recommender, port=0, limits=ServeLimits(HttpLimits(read_s=read_s)))) as server:
        stop = threading.Event()
        idle = connect(server)
        body = connect(server)  # headers, then the body a byte at a time
        body.sendall(b"POST /recommend HTTP/1.0\r\nContent-Length: 500\r\n\r\n{")
        head = connect(server)  # the headers a byte at a time
        head.sendall(b"GET /health HTTP/1.0\r\nX-Slow: ")
        for sock, byte in ((body, b" "), (head, b"a")):
            dribble(sock, byte, 0.1, stop)
        try:
            assert call(server, payload={"history": history, "k": 1})[0] == 200  # others are answered meanwhile
            got, secs = until_closed(idle, 5 * read_s)
            assert got == b"" and secs < 3 * read_s
            got, secs = until_closed(body, 5 * read_s)
            assert got.startswith(b"HTTP/1.0 408") and b"did not arrive within 1.0 s" in got and secs < 3 * read_s
            got, secs = until_closed(head, 5 * read_s)
            assert b"200" not in got and secs < 3 * read_s
        finally:
            stop.set()
            for sock in (idle, body, head):
                sock.close()


def test_connections_past_the_cap_get_503_with_retry_after(recommender):
    limits = ServeLimits(HttpLimits(read_s=30, max_connections=2))
    with running(RecommendServer(recommender, port=0, limits=limits)) as server:
        held = [connect(server), connect(server)]
        try:
            wait_for(lambda: call(server, "/health")[0] == 503)
            status, reply, headers = call(server, "/health")
            assert status == 503 and headers["Retry-After"] == "1" and "too many connections" in reply["error"]
        finally:
            for sock in held:
                sock.close()
        wait_for(lambda: call(server, "/health")[0] == 200)


@contextlib.contextmanager
def held(recommender, history, limits: ServeLimits):
    """A server whose engine holds each batch until `gate` is set, with a `first` request already
    taken into a batch (nothing queued behind it); `send()` sends another from a thread."""
    gate, entered = threading.Event(), threading.Event()
    rec, calls = wrapped(recommender, lambda mode, requests: (entered.set(), gate.wait(CLIENT_TIMEOUT_S)))
    payload = {"history": history, "k": 1}
    with running(RecommendServer(rec, port=0, limits=limits)) as server, ThreadPoolExecutor(2) as threads:
        send = functools.partial(threads.submit, call, server, payload=payload)
        first = send()
        assert entered.wait(CLIENT_TIMEOUT_S)
        try:
            yield SimpleNamespace(server=server, send=send, first=first, gate=gate, calls=calls, payload=payload)
        finally:
            gate.set()


def test_a_full_queue_gets_503_with_retry_after(recommender, history):
    with held(recommender, history, ServeLimits(max_queue=1)) as h:
        second = h.send()
        wait_for(lambda: call(h.server, "/health")[1]["queued"] == 1)
        status, reply, headers = call(h.server, payload=h.payload)
        assert status == 503 and headers["Retry-After"] == "1" and "busy" in reply["error"]
        h.gate.set()
        assert h.first.result()[0] == second.result()[0] == 200
    assert h.calls == [1, 1]


def test_a_late_answer_is_a_504_and_a_request_not_started_is_dropped(recommender, history):
    with held(recommender, history, ServeLimits(answer_s=0.5)) as h:
        for future in (h.first, h.send()):
            status, reply, _ = future.result()
            assert status == 504 and reply["error"] == "no answer within 0.5 s"
        h.gate.set()
        wait_for(lambda: call(h.server, "/health")[1]["users_served"] == 1)
        assert call(h.server, payload=h.payload)[0] == 200  # the one not started was left out, not answered
    assert h.calls == [1, 1]


def test_a_failing_request_fails_alone_and_its_500_says_nothing_of_the_failure(recommender):
    users = histories(recommender, 4)
    poison = tuple(users[0])

    def fail_on_poison(mode, requests):
        if any(r.history == poison for r in requests):
            raise RuntimeError("CUDA error at /opt/secret/engine.py:42")
    rec, calls = wrapped(recommender, fail_on_poison)
    server = RecommendServer(rec, port=0, window_s=1.0)  # the four arrive within one batch's window
    with running(server), ThreadPoolExecutor(4) as threads:
        replies = list(threads.map(lambda h: call(server, payload={"history": h, "k": 1}), users))
    assert calls[0] == 4 and sorted(calls[1:]) == [1, 1, 1, 1]
    assert [status for status, _, _ in replies] == [500, 200, 200, 200]
    assert replies[0][1] == {"error": "internal error answering the request; the server log has it"}


def test_hostile_json_gets_400(recommender, history):
    digits = "9" * 5000
    with running(RecommendServer(recommender, port=0)) as server:
        status, reply, _ = call(server, raw=b"[" * 100_000 + b"]" * 100_000)
        assert status == 400 and reply["error"].startswith("body: JSON nested too deeply")
        for body in (f'{{"history": [{digits}]}}', f'{{"history": {history}, "k": {digits}}}'):
            status, reply, _ = call(server, raw=body.encode())
            assert status == 400 and reply["error"] == (f"body: an integer of 5000 digits; item ids and k have at "
                                                        f"most {MAX_INT_DIGITS}")
        sock = connect(server)
        sock.sendall(b"POST /recommend HTTP/1.0\r\nContent-Length: \xb2\r\n\r\n")  # a superscript two
        got, _ = until_closed(sock, CLIENT_TIMEOUT_S)
        assert got.startswith(b"HTTP/1.0 400") and b"expected a byte count" in got


def test_reasoning_on_a_model_without_an_answer_token_is_400_naming_it(recommender, history):
    plain = dataclasses.replace(recommender, cfg=dataclasses.replace(recommender.cfg, answer_open_id=None))
    with running(RecommendServer(plain, port=0)) as server:
        for mode in ("reasoning", "think_ahead"):
            status, reply, _ = call(server, payload={"history": history, "mode": mode})
            assert status == 400 and reply["error"] == (
                f"mode: {mode} needs the model's <answer> token, which {recommender.model} does not have "
                "(trained without reasoning); use mode direct")
        assert call(server, payload={"history": history, "k": WIDTH})[0] == 200


def test_the_token_is_checked_on_the_headers_before_the_body(recommender, history, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "s3cret")  # what `gream serve` reads where --token is not given
    payload = {"history": history, "k": 1}
    with running(RecommendServer(recommender, port=0, limits=ServeLimits(HttpLimits(read_s=30)))) as server:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            status, reply, got = call(server, payload=payload, headers=headers)
            assert status == 401 and got["WWW-Authenticate"] == "Bearer" and "bearer token" in reply["error"]
        assert call(server, "/health")[0] == 401
        assert call(server, payload=payload, headers={"Authorization": "Bearer s3cret"})[0] == 200
        sock = connect(server)  # promises a body it never sends: refused at once, not at the read deadline
        sock.sendall(b"POST /recommend HTTP/1.0\r\nContent-Length: 1000\r\n\r\n")
        got, secs = until_closed(sock, 10)
        assert got.startswith(b"HTTP/1.0 401") and secs < 5


def test_binding_off_loopback_without_a_token_warns(recommender, caplog, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    caplog.set_level(logging.WARNING, logger="gream.serve")
    RecommendServer(recommender, host="127.0.0.1", port=0).server_close()
    RecommendServer(recommender, host="0.0.0.0", port=0, token="t").server_close()
    assert not caplog.records
    RecommendServer(recommender, host="0.0.0.0", port=0).server_close()
    assert [r.getMessage() for r in caplog.records] == [
        f"serving off loopback without a token: anyone who reaches the port can use the model; set {TOKEN_ENV} "
        "or pass --token"]
