"""The teacher client (indexing.rewrite.EndpointTeacher) against a real local endpoint that misbehaves:
content of the wrong type, a reply that trickles, a redirect to another host (here another local
port, which records what it is sent), a reply too big, bytes that are not UTF-8 JSON, and a cache
file torn or written by a client that cached a wrong type. Each is the stage's own error
(RewriteError, exit 2) or a cache line asked again; nothing wrong reaches the cache."""
from __future__ import annotations

import json
import logging
import time

import pytest

from indexing.rewrite import EndpointTeacher, RewriteCache, RewriteError, cache_key, rewrite_texts
from tests.hostile_http import chat_body, raw_server, send, trickle

TEXT = "Title: a blue stapler."


def rewrite(url: str, cache_path, **teacher) -> list[str]:
    t = EndpointTeacher(url + "/v1", "m", max_tokens=16, **teacher)
    return rewrite_texts([TEXT], t, RewriteCache(cache_path), max_chars=100).texts


@pytest.mark.parametrize("content", [[{"type": "text", "text": "x"}], {"text": "x"}, 5, True])
def test_content_that_is_not_a_string_is_refused_before_the_cache(content, tmp_path):
    cache = tmp_path / "cache.jsonl"
    with raw_server(lambda h: send(h, chat_body(content))) as server:
        with pytest.raises(RewriteError, match=rf"choices\[0\]\.message\.content is {type(content).__name__}, "
                                               "expected a string"):
            rewrite(server.url, cache)
    assert not cache.exists()  # a re-run asks again instead of failing on the cached value


@pytest.mark.parametrize("start, byte", [
    (b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{", b" "),  # the body
    (b"HTTP/1.0 200 OK\r\nX-Slow: ", b"a"),  # the headers
])
def test_a_trickling_reply_ends_at_the_deadline(start, byte, tmp_path):
    with raw_server(lambda h: trickle(h, start, byte, every_s=0.05, for_s=8)) as server:
        began = time.monotonic()
        with pytest.raises(RewriteError, match="no complete reply within 1.0 s"):
            rewrite(server.url, tmp_path / "cache.jsonl", timeout_s=1.0)
        assert time.monotonic() - began < 4


def test_a_redirect_is_refused_and_the_key_never_leaves(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    with raw_server(lambda h: send(h, chat_body("from elsewhere"))) as other:
        target = other.url + "/v1/chat/completions"
        with raw_server(lambda h: send(h, b"moved", 302, {"Location": target})) as server:
            with pytest.raises(RewriteError, match=f"HTTP 302 to {target}, not followed: moved"):
                rewrite(server.url, tmp_path / "cache.jsonl")
            assert server.seen[0]["headers"]["Authorization"] == "Bearer sk-secret"
        assert other.seen == []


@pytest.mark.parametrize("length", [True, False])
def test_a_reply_past_the_byte_cap_is_refused(length, tmp_path):
    with raw_server(lambda h: send(h, chat_body("x" * 300_000), length=length)) as server:
        with pytest.raises(RewriteError, match="reply larger than 65536 bytes"):
            rewrite(server.url, tmp_path / "cache.jsonl", max_reply_bytes=65536)
        assert rewrite(server.url, tmp_path / "cache.jsonl") == ["x" * 100]  # the default cap (1 MiB) takes it


@pytest.mark.parametrize("body, message", [
    (b'{"choices": [{"message": {"content": "caf\xe9"}}]}', "reply is not JSON text .*'utf-8' codec"),  # Latin-1
    (b"[" * 100_000 + b"]" * 100_000, "reply JSON nested too deeply"),
    (b'{"choices": ' + b"7" * 5000 + b"}", "reply is not JSON text .*digits"),
])
def test_a_reply_that_is_not_json_text_is_the_stages_error(body, message, tmp_path):
    with raw_server(lambda h: send(h, body)) as server:
        with pytest.raises(RewriteError, match=message):
            rewrite(server.url, tmp_path / "cache.jsonl")


def test_a_torn_cache_asks_again_for_its_bad_lines_only(tmp_path, caplog):
    teacher_name = "endpoint:m"
    good, wrong_type = cache_key(teacher_name, TEXT), cache_key(teacher_name, "Title: a red pen.")
    lines = [json.dumps({"key": good, "text": "A stapler."}).encode(),
             b'{"key": "b", "te',  # cut by a crash
             b'{"key": "c", "text": "caf\xc3',  # cut inside a character
             json.dumps({"key": wrong_type, "text": ["cached", "by", "an", "older", "client"]}).encode(),
             json.dumps({"key": 5, "text": "x"}).encode(),
             b"[" * 5000]
    cache = tmp_path / "cache.jsonl"
    cache.write_bytes(b"\n".join(lines) + b"\n")
    caplog.set_level(logging.WARNING, logger="indexing.rewrite")
    assert RewriteCache(cache).entries == {good: "A stapler."}
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records] == [
        f"line {n} unreadable (interrupted write?), will redo that item" for n in range(2, 7)]
    with raw_server(lambda h: send(h, chat_body("A pen."))) as server:
        t = EndpointTeacher(server.url + "/v1", "m", max_tokens=16)
        result = rewrite_texts([TEXT, "Title: a red pen."], t, RewriteCache(cache), max_chars=100)
        assert result.texts == ["A stapler.", "A pen."] and (result.from_cache, result.rewritten) == (1, 1)
        assert len(server.seen) == 1
