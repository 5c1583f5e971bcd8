"""`gream dashboard` facing what its tests with a well-behaved run and browser do not show: Host
headers of other names (DNS rebinding), idle connections, and run files caught half-written.
Real server, real sockets; the run's files are written by MetricsLog or as a crash would leave them."""
from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from cluster.metrics_log import MetricsLog
from cluster.run_layout import RunLayout
from gream.dashboard import make_server, url_of
from gream.http_guard import HttpLimits


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    log = MetricsLog(run / "rl", tensorboard=False)
    for step in range(3):
        log.write(step, {"reward/mean": 0.1 * step})
    log.close()
    return run


@pytest.fixture
def dashboard(run_dir):
    server = make_server(run_dir, "127.0.0.1", 0, allow_hosts=["Dash.Example.org"], limits=HttpLimits(read_s=1.0))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def fetch(server, path: str, host: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url_of(server) + path.lstrip("/"), headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_host_header_of_another_name_is_refused(dashboard):
    port = dashboard.server_address[1]
    for host in ("evil.example.com", f"evil.example.com:{port}", "127.0.0.1.evil.example.com", "localhost.evil.com"):
        status, body = fetch(dashboard, "/api/metrics", host)
        assert status == 403 and body["error"].startswith(f"Host {host!r} is not a name of this server"), host
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST.", f"[::1]:{port}", "10.1.2.3",
                 f"dash.example.org:{port}", socket.gethostname()):
        status, body = fetch(dashboard, "/api/metrics", host)
        assert status == 200 and body["rl"]["steps"] == [0, 1, 2], host


def test_an_idle_connection_is_closed_at_the_read_deadline(dashboard):
    with socket.create_connection(dashboard.server_address[:2], timeout=10) as sock:
        start = time.monotonic()
        assert sock.recv(100) == b""
        assert time.monotonic() - start < 3


def test_run_files_caught_half_written(run_dir, dashboard):
    layout = RunLayout(run_dir)
    # status.json cut inside a character: left for the next poll, like a torn JSON text.
    layout.status.write_bytes(b'{"step": 2, "note": "caf\xc3')
    status, body = fetch(dashboard, "/api/metrics")
    assert status == 200 and body["status"] is None and body["rl"]["steps"] == [0, 1, 2]
    # Bytes no reader expects: a 500 that says so, and the next poll, once the file is whole, is served.
    metrics = layout.metrics("rl")
    good = metrics.read_bytes()
    metrics.write_bytes(good + b'{"step": 3, "x": "\xff\xfe"}\n')
    status, body = fetch(dashboard, "/api/metrics")
    assert status == 500 and body["error"] == (f"{run_dir}: a file could not be read this time "
                                               "(UnicodeDecodeError); the next refresh tries again")
    metrics.write_bytes(good)
    assert fetch(dashboard, "/api/metrics")[0] == 200
