"""A real local HTTP server that answers however a test tells it to, byte by byte: for clients that
must survive a hostile or broken endpoint (wrong JSON types, a trickle, a redirect, a huge reply)."""
from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace


@contextlib.contextmanager
def raw_server(answer: Callable[[BaseHTTPRequestHandler], None]):
    """On 127.0.0.1 (a free port, a daemon thread), answers every request with `answer(handler)`,
    which writes the whole reply itself (status line included) to `handler.wfile`. Yields an object
    with the server's `url` and `seen`, each request's path and headers."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):  # noqa: N802 (http.server's naming)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append({"path": self.path, "headers": dict(self.headers)})
            try:
                answer(self)
            except OSError:  # the client gave up on the reply: what the test wanted to see
                pass

        do_GET = do_POST

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{httpd.server_address[1]}", seen=seen)
    finally:
        httpd.shutdown()
        httpd.server_close()


def chat_body(content) -> bytes:
    """A chat-completions reply whose message content is `content`, whatever its type."""
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()


def send(handler: BaseHTTPRequestHandler, body: bytes, status: int = 200, headers: dict | None = None,
         length: bool = True) -> None:
    """A whole reply; without `length` the body ends when the connection closes."""
    head = [f"HTTP/1.0 {status} X", "Content-Type: application/json"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if length:
        head.append(f"Content-Length: {len(body)}")
    handler.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)


def trickle(handler: BaseHTTPRequestHandler, start: bytes, byte: bytes, every_s: float, for_s: float) -> None:
    """`start`, then `byte` every `every_s` seconds for `for_s` seconds: a reply that never ends
    before a client's deadline, though no single read waits long."""
    handler.wfile.write(start)
    stop = time.monotonic() + for_s
    while time.monotonic() < stop:
        time.sleep(every_s)
        handler.wfile.write(byte)
        handler.wfile.flush()
