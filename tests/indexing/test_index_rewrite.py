"""Teacher rewrite against a real local HTTP server speaking the OpenAI chat-completions JSON:
cache hits, resume after an interrupted run, and error reporting."""
import json

import pytest

from indexing.rewrite import (
    PROMPT,
    EndpointTeacher,
    RewriteCache,
    RewriteError,
    rewrite_texts,
)
from tests.chat_server import ChatServer


@pytest.fixture
def server():
    with ChatServer(lambda prompt: f"REWRITE({prompt.split('Listing: ', 1)[1]})") as s:
        yield s


TEXTS = [f"Title: item {i}." for i in range(7)]


def test_rewrite_caches_and_resumes(server, tmp_path):
    teacher = EndpointTeacher(server.url, "teacher-x", max_tokens=64, workers=2)
    cache_path = tmp_path / "rewrite.jsonl"
    server.fail_from = 5  # requests 1-4 succeed: batches 1 and 2 of size 2 complete, batch 3 fails
    with pytest.raises(RewriteError, match="HTTP 500: teacher overloaded"):
        rewrite_texts(TEXTS, teacher, RewriteCache(cache_path), max_chars=200, batch_size=2)
    assert len(cache_path.read_text().splitlines()) == 4

    server.fail_from = None
    sent_before = len(server.requests)
    result = rewrite_texts(TEXTS, teacher, RewriteCache(cache_path), max_chars=200, batch_size=2)
    assert result.texts == [f"REWRITE({t})" for t in TEXTS]
    assert (result.from_cache, result.rewritten) == (4, 3)
    resent = [r["messages"][0]["content"] for r in server.requests[sent_before:]]
    assert sorted(resent) == sorted(PROMPT.format(text=t) for t in TEXTS[4:])
    assert server.requests[-1]["model"] == "teacher-x" and server.requests[-1]["max_tokens"] == 64

    # A third run is served from disk: nothing is sent.
    sent = len(server.requests)
    again = rewrite_texts(TEXTS, teacher, RewriteCache(cache_path), max_chars=200, batch_size=2)
    assert again.texts == result.texts and again.from_cache == 7 and len(server.requests) == sent


def test_cache_ignores_a_torn_last_line(tmp_path):
    path = tmp_path / "rewrite.jsonl"
    path.write_text(json.dumps({"key": "a", "text": "A"}) + "\n" + '{"key": "b", "te')
    assert RewriteCache(path).entries == {"a": "A"}


def test_unreachable_endpoint_is_a_clear_error(server, tmp_path):
    url = server.url
    server.close()
    teacher = EndpointTeacher(url, "m", max_tokens=8, timeout_s=5)
    with pytest.raises(RewriteError, match="cannot reach the teacher endpoint"):
        rewrite_texts(TEXTS[:1], teacher, RewriteCache(tmp_path / "c.jsonl"), max_chars=50)
