"""Teacher rewrite against a real local HTTP server speaking the OpenAI chat-completions JSON:
cache hits, resume after an interrupted run, and error reporting."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from indexing.rewrite import PROMPT, EndpointTeacher, RewriteCache, RewriteError, rewrite_texts


class ChatServer:
    """Answers POST /v1/chat/completions with 'REWRITE(<listing>)'; can fail from the n-th request."""

    def __init__(self):
        self.requests: list[dict] = []
        self.fail_from: int | None = None
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append(body)
                    failing = outer.fail_from is not None and len(outer.requests) >= outer.fail_from
                if self.path != "/v1/chat/completions" or failing:
                    self.send_response(500 if failing else 404)
                    self.end_headers()
                    self.wfile.write(b"teacher overloaded")
                    return
                listing = body["messages"][0]["content"].split("Listing: ", 1)[1]
                reply = {"choices": [{"message": {"role": "assistant", "content": f"REWRITE({listing})"}}]}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = ChatServer()
    yield s
    s.close()


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
