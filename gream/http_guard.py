"""What `gream serve` and `gream dashboard` share to face clients they cannot trust: a deadline on
receiving each request, a timeout on sending each reply, a cap on connections served at once, and
the optional checks of the Host header (DNS rebinding) and of a bearer token, both made on the
headers, before a body is read.

The read deadline covers the request line, the headers and the body together, so a client that
connects and sends nothing, or trickles a byte at a time, is dropped when it passes; a per-read
timeout alone would let a trickle hold its thread for ever. One request per connection (HTTP/1.0),
so an idle connection is one that has not sent its request, and the same deadline closes it.

Connections past `max_connections` get a 503 with Retry-After once their headers arrive (within
REFUSE_READ_S); past twice that many, the server closes them unread, so a flood costs at most
2 x max_connections threads.
"""
from __future__ import annotations

import hmac
import io
import ipaddress
import json
import logging
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cluster.logs import fields

log = logging.getLogger(__name__)

REFUSE_READ_S = 1.0  # a refused connection's headers must arrive within this
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain"})


@dataclass(frozen=True)
class HttpLimits:
    read_s: float = 10.0  # the whole request (line, headers, body) must arrive within this
    write_s: float = 10.0  # sending one reply
    max_connections: int = 128  # served at once; the next ones get 503
    retry_after_s: int = 1  # the Retry-After of a 503

    def __post_init__(self) -> None:
        if self.read_s <= 0 or self.write_s <= 0 or self.max_connections < 1 or self.retry_after_s < 0:
            raise ValueError(f"HttpLimits: timeouts must be positive and max_connections at least 1, got {self}")


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server reachable from this machine only."""
    if host in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_names() -> frozenset[str]:
    """The names this machine answers to without DNS tricks: localhost and its own host names."""
    return LOCAL_NAMES | {socket.gethostname().lower(), socket.getfqdn().lower()}


def host_allowed(header: str | None, names: frozenset[str]) -> bool:
    """A Host header naming an IP address or one of `names` (any port). A browser sends the name
    the page was loaded from: a rebound attacker's domain is none of these. No header: not a browser."""
    if not header:
        return True
    host = header.strip().lower()
    if host.startswith("["):  # [v6]:port
        host = host[1:host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return host.rstrip(".") in names


class _DeadlineReader(io.RawIOBase):
    """The connection's bytes, until `deadline` (time.monotonic()); past it a read raises TimeoutError."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self.sock, self.deadline = sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive within the read deadline")
        self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


class GuardedServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer with `limits`; `token` (a bearer token every request must carry) and
    `allowed_hosts` (the Host names accepted besides IP addresses; None: any) are optional."""

    daemon_threads = True  # a client that hangs up mid-request does not keep the server from stopping
    # The listen backlog: socketserver's 5 resets connections beyond it when 32 clients connect at once.
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], limits: HttpLimits,
                 token: str | None = None, allowed_hosts: frozenset[str] | None = None) -> None:
        self.limits, self.token, self.allowed_hosts = limits, token, allowed_hosts
        self.served = threading.BoundedSemaphore(limits.max_connections)
        self._thread_slots = threading.BoundedSemaphore(2 * limits.max_connections)
        super().__init__(address, handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def process_request(self, request, client_address) -> None:
        if not self._thread_slots.acquire(blocking=False):  # closed unread: past twice max_connections
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._thread_slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._thread_slots.release()

    def handle_error(self, request, client_address) -> None:
        # socketserver prints the traceback to stderr; the log keeps it with the client's address.
        if isinstance(sys.exc_info()[1], ConnectionError):  # the client hung up: its own doing
            log.debug("client hung up", extra=fields(client=str(client_address[0])))
        else:
            log.exception("request handler failed", extra=fields(client=str(client_address[0])))


class GuardedHandler(BaseHTTPRequestHandler):
    """Applies its server's limits and checks; subclasses answer with `send_body` / `send_json`."""

    server: GuardedServer
    server_version = "gream"
    sys_version = ""  # no Python version in the Server header

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the plain reader; this one keeps the deadline
        self.admitted = self.server.served.acquire(blocking=False)
        read_s = self.server.limits.read_s if self.admitted else min(self.server.limits.read_s, REFUSE_READ_S)
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, time.monotonic() + read_s))

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self.admitted:
                self.server.served.release()

    def parse_request(self) -> bool:
        """The request line and headers are in; refuse here, before any body is read."""
        if not super().parse_request():
            return False
        if not self.admitted:
            retry = self.server.limits.retry_after_s
            self.send_json(503, {"error": f"too many connections; retry after {retry} s"}, {"Retry-After": str(retry)})
            return False
        names = self.server.allowed_hosts
        if names is not None and not host_allowed(self.headers.get("Host"), names):
            self.send_json(403, {"error": f"Host {self.headers.get('Host')!r} is not a name of this server; "
                                          "add it with --allow-host if it is"})
            return False
        if self.server.token is not None and not self._authorized():
            self.send_json(401, {"error": "missing or wrong bearer token (Authorization: Bearer TOKEN)"},
                           {"WWW-Authenticate": "Bearer"})
            return False
        return True

    def _authorized(self) -> bool:
        scheme, _, given = (self.headers.get("Authorization") or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.server.token.encode())

    def send_response(self, code: int, message: str | None = None) -> None:
        # Every reply starts here (send_error too): a client that does not read it is dropped in write_s.
        self.connection.settimeout(self.server.limits.write_s)
        super().send_response(code, message)

    def send_body(self, code: int, content_type: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")  # JSON and text never rendered as HTML
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, code: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        self.send_body(code, "application/json", json.dumps(payload).encode(), headers)
