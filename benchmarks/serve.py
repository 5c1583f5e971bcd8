"""`gream serve` under load: QPS and p50/p99 latency per answer mode and number of concurrent clients.

Starts `gream serve RUN` as a subprocess on a finished run (its spec.yaml, or --spec), waits for
GET /health, then for each mode of --modes and each client count of --clients sends --requests
POST /recommend requests from that many threads (urllib, one request in flight per thread), the
histories of the run's validation users in split order (cycling). One untimed request per mode warms
the engine first. Reports requests per second (requests / wall seconds of the round), client-side
p50 / p99 latency and the server's engine batches per round, as a table and as JSON (--out).

    python benchmarks/serve.py runs/demo --requests 256 --out serve.json
    python benchmarks/serve.py runs/demo --requests 8          # smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cluster.ranks import free_port  # noqa: E402


def summarize(latencies_s: list[float], wall_s: float) -> dict:
    """QPS and latency percentiles of one round."""
    ms = 1000 * np.asarray(latencies_s)
    return {"requests": len(ms), "qps": len(ms) / wall_s, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}


def format_table(rows: list[dict]) -> str:
    lines = [f"{'mode':<12}{'clients':>8}{'requests':>9}{'QPS':>9}{'p50 ms':>10}{'p99 ms':>10}{'batches':>9}"]
    lines += [f"{r['mode']:<12}{r['clients']:>8}{r['requests']:>9}{r['qps']:>9.2f}{r['p50_ms']:>10.1f}"
              f"{r['p99_ms']:>10.1f}{r['batches']:>9}" for r in rows]
    return "\n".join(lines)


def post(url: str, payload: dict) -> float:
    """Seconds to answer one request; a non-200 reply raises."""
    start = time.perf_counter()
    req = urllib.request.Request(url + "/recommend", json.dumps(payload).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as resp:
        json.loads(resp.read())
    return time.perf_counter() - start


def health(url: str) -> dict:
    with urllib.request.urlopen(url + "/health", timeout=10) as resp:
        return json.loads(resp.read())


def round_of(url: str, mode: str, clients: int, histories: list[list[int]], requests: int, k: int) -> dict:
    payloads = [{"history": histories[i % len(histories)], "k": k, "mode": mode} for i in range(requests)]
    before = health(url)["batches"]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as threads:
        latencies = list(threads.map(lambda p: post(url, p), payloads))
    wall = time.perf_counter() - start
    return {"mode": mode, "clients": clients, **summarize(latencies, wall), "batches": health(url)["batches"] - before}


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a finished run folder (or with --stage export an export folder)")
    ap.add_argument("--stage", default="rl", choices=("rl", "sft", "export"))
    ap.add_argument("--spec", type=Path, help="the run's spec (default: RUN/spec.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="spec override for the server")
    ap.add_argument("--modes", nargs="+", default=["direct", "reasoning", "think_ahead"])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=256, help="requests per mode and client count")
    ap.add_argument("--k", type=int, default=10, help="items per request")
    ap.add_argument("--start-timeout-s", type=float, default=900)
    ap.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = ap.parse_args()

    histories = histories_of(args)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(args, port)
    rows = []
    try:
        server = wait_up(proc, url, args.start_timeout_s)
        for mode in args.modes:
            post(url, {"history": histories[0], "k": args.k, "mode": mode})  # warm-up, untimed
            for clients in args.clients:
                rows.append(round_of(url, mode, clients, histories, args.requests, args.k))
                print(format_table(rows[-1:]).splitlines()[1], flush=True)
    finally:
        proc.send_signal(signal.SIGINT)  # the server shuts its rollout pool down
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(f"\n{server['model']} ({server['stage']}), {args.requests} requests per row, k={args.k}")
    print(format_table(rows))
    if args.out:
        args.out.write_text(json.dumps({"model": server["model"], "stage": server["stage"], "k": args.k,
                                        "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
