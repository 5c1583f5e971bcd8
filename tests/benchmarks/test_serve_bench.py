"""benchmarks/serve.py: its figures from client latencies (pure, no server), and the script itself on
a tiny setting against a real server in this process (the tiny policy on the torch backend), slow
and idle clients included."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.serve import format_table, summarize, versus
from gream.http_guard import HttpLimits
from gream.serve import RecommendServer
from gream.serve_requests import ServeLimits
from tests.serve_fixtures import running, torch_recommender

REPO = Path(__file__).resolve().parents[2]


def test_qps_and_percentiles_of_a_round():
    out = summarize([0.1] * 98 + [1.0, 2.0], wall_s=4.0)
    assert out["requests"] == 100 and out["qps"] == 25.0
    assert out["p50_ms"] == pytest.approx(100.0)
    assert 1000.0 < out["p99_ms"] < 2000.0  # numpy's linear interpolation between the two slowest
    table = format_table([{"mode": "direct", "clients": 8, "slow": 2, **out, "lost": 0, "batches": 13}])
    assert table.splitlines()[1].split() == ["direct", "8", "2", "100", "25.00", "100.0", f"{out['p99_ms']:.1f}",
                                             "0", "13"]
    alone = {**out, "mode": "direct", "clients": 6, "slow": 0, "lost": 1}
    beside = {**out, "mode": "direct", "clients": 8, "slow": 2, "p50_ms": 150.0, "p99_ms": out["p99_ms"], "lost": 0}
    assert versus(alone, beside) == {"mode": "direct", "clients": 8, "slow": 2, "p50_ratio": 1.5, "p99_ratio": 1.0,
                                     "lost": 1}


def test_the_load_test_runs_with_slow_clients(tiny_policy, tmp_path):
    recommender = torch_recommender(tmp_path, tiny_policy)
    run = tmp_path / "run"
    server = RecommendServer(recommender, port=0, limits=ServeLimits(HttpLimits(read_s=1.0)))
    with running(server):
        done = subprocess.run(
            [sys.executable, "benchmarks/serve.py", str(run), "--stage", "sft", "--url", server.url,
             "--modes", "direct", "--clients", "4", "--slow-clients", "2", "--slow-every-s", "0.05",
             "--requests", "12", "--k", "2", "--out", str(tmp_path / "serve.json")],
            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads((tmp_path / "serve.json").read_text())
    alone, beside = out["rows"]
    assert (alone["clients"], alone["slow"], beside["clients"], beside["slow"]) == (2, 0, 4, 2)
    assert alone["requests"] == beside["requests"] == 12 and alone["lost"] == beside["lost"] == 0
    assert alone["slow_connections"] == 0 and beside["slow_connections"] >= 2
    [ratio] = out["slow_vs_alone"]
    assert ratio["p50_ratio"] == beside["p50_ms"] / alone["p50_ms"] and ratio["lost"] == 0
    assert "direct 4 clients, 2 slow: p50" in done.stdout
