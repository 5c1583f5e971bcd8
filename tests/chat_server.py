"""A real local HTTP server speaking the OpenAI chat-completions JSON, for teacher tests."""
from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ChatServer:
    """Answers POST /v1/chat/completions on 127.0.0.1 (a free port, a daemon thread) with
    `reply(prompt)`, the prompt being the first message's content. Records every request body in
    `requests`; from the `fail_from`-th request on (counting from 1) answers HTTP 500
    'teacher overloaded'. Any other path is a 404. Use as a context manager or call `close()`."""

    def __init__(self, reply: Callable[[str], str]):
        self.reply = reply
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
                content = outer.reply(body["messages"][0]["content"])
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def prompts(self) -> list[str]:
        """The first message's content of every request, in arrival order."""
        with self.lock:
            return [r["messages"][0]["content"] for r in self.requests]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> ChatServer:
        return self

    def __exit__(self, *exc):
        self.close()
