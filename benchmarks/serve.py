"""`gream serve` under load: QPS and p50/p99 latency per answer mode and number of concurrent clients.

Starts `gream serve RUN` as a subprocess on a finished run (its spec.yaml, or --spec), waits for
GET /health, then for each mode of --modes and each client count of --clients sends --requests
POST /recommend requests from that many threads (urllib, one request in flight per thread), the
histories of the run's validation users in split order (cycling). One untimed request per mode warms
the engine first. Reports requests per second (requests / wall seconds of the round), client-side
p50 / p99 latency and the server's engine batches per round, as a table and as JSON (--out).

    python benchmarks/serve.py runs/demo --requests 256 --out serve.json
    python benchmarks/serve.py runs/demo --requests 8          # smoke run

With --slow-clients N, each client count C is run twice: C - N well-behaved clients alone, then the
same C - N beside N clients that never finish a request (half connect and send nothing, half send
headers and then the body a byte every --slow-every-s; each reconnects when the server drops it).
The second row's p50 and p99 are reported as ratios of the first's, and `lost` counts the
well-behaved requests not answered 200 (timed out, refused, reset):

    python benchmarks/serve.py runs/demo --modes direct --clients 64 --slow-clients 8 --requests 2048

--url measures a server already running (the run folder then only gives the histories). The
clients send $GREAM_SERVE_TOKEN as a bearer token when it is set.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.results import record  # noqa: E402
from cluster.ranks import free_port  # noqa: E402
from gream.serve import TOKEN_ENV  # noqa: E402


def summarize(latencies_s: list[float], wall_s: float) -> dict:
    """QPS and latency percentiles of one round."""
    ms = 1000 * np.asarray(latencies_s)
    return {"requests": len(ms), "qps": len(ms) / wall_s, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}


def format_table(rows: list[dict]) -> str:
    lines = [f"{'mode':<12}{'clients':>8}{'slow':>6}{'requests':>9}{'QPS':>9}{'p50 ms':>10}{'p99 ms':>10}"
             f"{'lost':>6}{'batches':>9}"]
    lines += [f"{r['mode']:<12}{r['clients']:>8}{r['slow']:>6}{r['requests']:>9}{r['qps']:>9.2f}{r['p50_ms']:>10.1f}"
              f"{r['p99_ms']:>10.1f}{r['lost']:>6}{r['batches']:>9}" for r in rows]
    return "\n".join(lines)


def _auth() -> dict[str, str]:
    token = os.environ.get(TOKEN_ENV)
    return {"Authorization": f"Bearer {token}"} if token else {}


def post(url: str, payload: dict) -> float:
    """Seconds to answer one request; a non-200 reply raises."""
    start = time.perf_counter()
    req = urllib.request.Request(url + "/recommend", json.dumps(payload).encode(),
                                 {"Content-Type": "application/json", **_auth()})
    with urllib.request.urlopen(req, timeout=600) as resp:
        json.loads(resp.read())
    return time.perf_counter() - start


def answered(url: str, payload: dict) -> float | None:
    """post's seconds, or None for a request not answered 200 (counted as lost)."""
    try:
        return post(url, payload)
    except (OSError, ValueError):  # HTTPError, a reset or refused connection, a reply cut short
        return None


def health(url: str) -> dict:
    with urllib.request.urlopen(urllib.request.Request(url + "/health", headers=_auth()), timeout=10) as resp:
        return json.loads(resp.read())


class SlowClients:
    """`n` clients holding connections without finishing a request, from `with` to its end: even
    ones idle, odd ones trickling a body a byte every `every_s`. `connections` counts the
    connections made, `dropped` those the server closed (each is opened again)."""

    def __init__(self, url: str, n: int, every_s: float) -> None:
        self.address = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
        self.n, self.every_s = n, every_s
        self.connections = self.dropped = 0
        self._stop, self._lock = threading.Event(), threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(i % 2 == 1,), daemon=True) for i in range(n)]

    def __enter__(self) -> "SlowClients":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _client(self, trickle: bool) -> None:
        head = "".join(f"{k}: {v}\r\n" for k, v in _auth().items())
        while not self._stop.is_set():
            try:
                sock = socket.create_connection(self.address, timeout=10)
            except OSError:  # refused: the server is past its connection cap, or gone
                self._stop.wait(self.every_s)
                continue
            with sock:
                sock.settimeout(None)  # blocking: a MSG_DONTWAIT read then returns at once
                self._count("connections")
                if trickle:
                    sock.sendall(f"POST /recommend HTTP/1.0\r\nContent-Length: 100000\r\n{head}\r\n".encode())
                while not self._stop.wait(self.every_s):
                    try:
                        if trickle:
                            sock.sendall(b" ")
                        sock.recv(4096, socket.MSG_DONTWAIT)  # a reply (408) or b"": the server is done with it
                    except BlockingIOError:  # still open, nothing said
                        continue
                    except OSError:  # reset
                        pass
                    self._count("dropped")
                    break

    def _count(self, what: str) -> None:
        with self._lock:
            setattr(self, what, getattr(self, what) + 1)


def round_of(url: str, mode: str, clients: int, histories: list[list[int]], requests: int, k: int,
             slow: int = 0, slow_every_s: float = 0.5) -> dict:
    """`requests` from `clients - slow` threads, beside `slow` SlowClients."""
    payloads = [{"history": histories[i % len(histories)], "k": k, "mode": mode} for i in range(requests)]
    before = health(url)["batches"]
    with SlowClients(url, slow, slow_every_s) as slow_clients:
        start = time.perf_counter()
        with ThreadPoolExecutor(clients - slow) as threads:
            latencies = list(threads.map(lambda p: answered(url, p), payloads))
        wall = time.perf_counter() - start
    done = [s for s in latencies if s is not None]
    return {"mode": mode, "clients": clients, "slow": slow, **summarize(done or [float("nan")], wall),
            "lost": len(latencies) - len(done), "slow_connections": slow_clients.connections,
            "slow_dropped": slow_clients.dropped, "batches": health(url)["batches"] - before}


def versus(alone: dict, beside: dict) -> dict:
    """The well-behaved clients' latency beside the slow ones, as ratios of theirs alone."""
    return {"mode": beside["mode"], "clients": beside["clients"], "slow": beside["slow"],
            "p50_ratio": beside["p50_ms"] / alone["p50_ms"], "p99_ratio": beside["p99_ms"] / alone["p99_ms"],
            "lost": alone["lost"] + beside["lost"]}


def start_server(args, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "gream.cli", "serve", str(args.run), "--stage", args.stage, "--port", str(port)]
    if args.spec:
        cmd += ["--spec", str(args.spec)]
    for item in args.set:
        cmd += ["--set", item]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(cmd, cwd=REPO, env=env)


def wait_up(proc: subprocess.Popen, url: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gream serve exited with {proc.returncode} before answering")
        try:
            return health(url)
        except OSError:
            time.sleep(1)
    raise SystemExit(f"gream serve did not answer {url}/health within {timeout_s:.0f} s")


def histories_of(args) -> list[list[int]]:
    from cluster.run_layout import RunLayout
    from cluster.spec import load_spec
    from indexing.dataset import split_from_spec

    spec = load_spec(args.spec or RunLayout(args.run).spec_file, args.set)
    return [list(ex.history) for ex in split_from_spec(spec).valid]


def rounds(url: str, args, histories: list[list[int]]) -> tuple[list[dict], list[dict]]:
    """The table's rows, and with --slow-clients each count's slow-beside-alone ratios."""
    rows, ratios = [], []
    for mode in args.modes:
        post(url, {"history": histories[0], "k": args.k, "mode": mode})  # warm-up, untimed
        for clients in args.clients:
            settings = [(clients, 0)] if not args.slow_clients else [
                (clients - args.slow_clients, 0), (clients, args.slow_clients)]
            for total, slow in settings:
                rows.append(round_of(url, mode, total, histories, args.requests, args.k, slow, args.slow_every_s))
                print(format_table(rows[-1:]).splitlines()[1], flush=True)
            if args.slow_clients:
                ratios.append(versus(rows[-2], rows[-1]))
    return rows, ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a finished run folder (or with --stage export an export folder)")
    ap.add_argument("--stage", default="rl", choices=("rl", "sft", "export"))
    ap.add_argument("--spec", type=Path, help="the run's spec (default: RUN/spec.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="spec override for the server")
    ap.add_argument("--modes", nargs="+", default=["direct", "reasoning", "think_ahead"])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--slow-clients", type=int, default=0, help="of each client count, how many are slow or idle")
    ap.add_argument("--slow-every-s", type=float, default=0.5, help="a trickling client's gap between bytes")
    ap.add_argument("--requests", type=int, default=256, help="requests per mode and client count")
    ap.add_argument("--k", type=int, default=10, help="items per request")
    ap.add_argument("--url", help="measure the server running there instead of starting one")
    ap.add_argument("--start-timeout-s", type=float, default=900)
    ap.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = ap.parse_args()
    if args.slow_clients and min(args.clients) <= args.slow_clients:
        ap.error(f"--slow-clients {args.slow_clients} leaves no well-behaved client at --clients {min(args.clients)}")

    histories = histories_of(args)
    if args.url:
        server = health(args.url)
        rows, ratios = rounds(args.url, args, histories)
    else:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_server(args, port)
        try:
            server = wait_up(proc, url, args.start_timeout_s)
            rows, ratios = rounds(url, args, histories)
        finally:
            proc.send_signal(signal.SIGINT)  # the server shuts its rollout pool down
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(f"\n{server['model']} ({server['stage']}), {args.requests} requests per row, k={args.k}")
    print(format_table(rows))
    for r in ratios:
        print(f"{r['mode']} {r['clients']} clients, {r['slow']} slow: p50 {r['p50_ratio']:.2f}x, "
              f"p99 {r['p99_ratio']:.2f}x of the others alone; {r['lost']} lost")
    # the ratios first: a report shows the first figures of a record
    result = {"slow_vs_alone": ratios, "model": server["model"], "stage": server["stage"], "k": args.k, "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    model = args.run if args.stage == "export" else args.run / args.stage / "model"
    record("serve", result, script=__file__, model=None if args.url else model,
           settings={"requests": args.requests, "url": args.url, "set": args.set})


if __name__ == "__main__":
    main()
