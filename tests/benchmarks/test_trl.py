"""benchmarks/trl_grpo.py end to end on two tiny steps per side: the real `gream rl` driver in a
subprocess and TRL's GRPOTrainer in process, both on the untrained tiny policy with the bundled Office
SIDs. Runs only where the optional benchmark packages are installed (requirements/bench.txt)."""
import math

import pytest

pytest.importorskip("trl", reason="TRL is not in the CPU lock: "
                    ".venv/bin/pip install --no-deps -r requirements/bench.txt")

from benchmarks.trl_grpo import parse_args, run_benchmark  # noqa: E402


@pytest.mark.slow
def test_both_sides_report_positive_finite_throughput(tiny_policy, tmp_path):
    index = tmp_path / "Office.index.json"
    tiny_policy.index.save(index)
    # The same-rows variant keeps gream's zero-variance groups: every sampled row through the optimizer, as TRL.
    args = parse_args(["--model", str(tiny_policy.model_dir), "--index", str(index), "--warmup", "1", "--windows", "1",
                       "--window-steps", "1", "--set", "rl.prompts_per_step=2", "--set", "rl.group_size=4",
                       "--gream-variant", "same-rows:rl.drop_flat_groups=false"])
    results = run_benchmark(args)
    assert set(results) == {"gream", "same-rows", "trl"}
    gream = results["gream"]
    assert gream["trained/s"] == pytest.approx(gream["informative/s"])  # only groups whose rewards differ
    for side in ("same-rows", "trl"):
        rate = results[side]["completions/s"]
        assert math.isfinite(rate) and rate > 0, (side, results[side])
        assert results[side]["length"] <= tiny_policy.index.depth + 1  # SID tokens + EOS at most
        assert results[side]["trained/s"] == pytest.approx(rate)
        assert results[side]["informative/s"] <= rate
