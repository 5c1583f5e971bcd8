"""benchmarks/serve.py's figures from client latencies (pure, no server)."""
import pytest

from benchmarks.serve import format_table, summarize


def test_qps_and_percentiles_of_a_round():
    out = summarize([0.1] * 98 + [1.0, 2.0], wall_s=4.0)
    assert out["requests"] == 100 and out["qps"] == 25.0
    assert out["p50_ms"] == pytest.approx(100.0)
    assert 1000.0 < out["p99_ms"] < 2000.0  # numpy's linear interpolation between the two slowest
    table = format_table([{"mode": "direct", "clients": 8, **out, "batches": 13}])
    assert table.splitlines()[1].split() == ["direct", "8", "100", "25.00", "100.0", f"{out['p99_ms']:.1f}", "13"]
