"""`gream dashboard RUN`: a live web page for one run directory, served by the standard library.

Two routes: `/` (the page, gream/dashboard_page.py) and `/api/metrics` (the run read afresh on
every request, gream/run_state.py). The page polls the JSON route and redraws, so the server keeps
no state and can be started, stopped or pointed at a finished run at any time.

The server (gream.http_guard) drops slow and idle connections and answers 403 to a Host header
that is not an IP address or a name of this machine (or --allow-host): a page on another site whose
domain is re-pointed at 127.0.0.1 (DNS rebinding) cannot read the run. A file caught mid-write in a
shape the reader does not expect is a 500 for that poll, not a dropped connection.
"""
from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path
from typing import Sequence

from cluster.logs import fields
from gream.dashboard_page import PAGE
from gream.http_guard import GuardedHandler, GuardedServer, HttpLimits, host_names
from gream.run_state import RunDirError, read_run_state

log = logging.getLogger(__name__)

DEFAULT_LIMITS = HttpLimits(max_connections=32)  # a page polls once every few seconds


class _Handler(GuardedHandler):
    def __init__(self, *args, run_dir: Path, **kwargs):
        self.run_dir = run_dir
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        route = self.path.split("?", 1)[0]
        if route in ("/", "/index.html"):
            self._send(200, "text/html; charset=utf-8", PAGE.encode())
        elif route == "/api/metrics":
            try:
                body, code = read_run_state(self.run_dir).to_json(), 200
            except RunDirError as exc:  # e.g. the run folder was removed while the page is open
                body, code = {"error": str(exc)}, 500
            except Exception as exc:  # a file caught mid-write in a shape no reader expects: the next poll retries
                log.warning("run not readable this time", exc_info=True, extra=fields(run=str(self.run_dir)))
                body, code = {"error": f"{self.run_dir}: a file could not be read this time "
                                       f"({type(exc).__name__}); the next refresh tries again"}, 500
            self._send(code, "application/json", json.dumps(body, allow_nan=False).encode())
        else:
            self._send(404, "text/plain; charset=utf-8", f"no route {route}; try / or /api/metrics\n".encode())

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_body(code, content_type, body, {"Cache-Control": "no-store"})

    def log_message(self, fmt: str, *args) -> None:
        # One line per poll would bury the run's own logs; keep requests at DEBUG.
        log.debug(fmt % args)


class _Once(logging.Filter):
    """The page polls every few seconds; a standing condition (a truncated checkpoint folder stays on
    disk) would repeat its warning on every poll. Each distinct warning passes once."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.getMessage(), repr(getattr(record, "fields", None)))
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def make_server(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8080, allow_hosts: Sequence[str] = (),
                limits: HttpLimits = DEFAULT_LIMITS) -> GuardedServer:
    """A server for `run_dir`, bound but not yet serving (port 0 picks a free port). A Host header
    must be an IP address, this machine's name or one of `allow_hosts`."""
    run_dir = Path(run_dir)
    read_run_state(run_dir)  # fail now, with the reason, rather than on the first page load
    names = host_names() | {h.strip().lower() for h in allow_hosts}
    return GuardedServer((host, port), partial(_Handler, run_dir=run_dir), limits, allowed_hosts=names)


def url_of(server: GuardedServer) -> str:
    return server.url + "/"


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8080, allow_hosts: Sequence[str] = ()) -> None:
    """Serve until interrupted."""
    once = _Once()
    for name in ("cluster.checkpoint", "gream.run_state"):
        logging.getLogger(name).addFilter(once)
    server = make_server(run_dir, host, port, allow_hosts)
    log.info("dashboard serving", extra=fields(run=str(run_dir), url=url_of(server)))
    print(f"gream dashboard for {run_dir}: {url_of(server)}  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
