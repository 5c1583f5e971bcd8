"""benchmarks/scaling.py: the --project parsing and the tables (pure, no Ray)."""
import json

import pytest

from benchmarks.scaling import last_run, main, metrics_path, phase_shares, scaling_table


def record(step, rollout, train, reward=0.01, push=0.1, other=0.0, **extra):
    return {"step": step, "time/rollout": rollout, "time/reward": reward, "time/train": train, "time/push": push,
            "time/step": rollout + reward + train + push + other, **extra}


def write_run(tmp_path, records):
    rl = tmp_path / "rl"
    rl.mkdir()
    (rl / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return rl / "metrics.jsonl"


def test_shares_add_up_and_skip_the_first_steps():
    records = [record(1, 20.0, 5.0), record(2, 3.0, 1.0, other=0.4, sampling_rounds=2),
               record(3, 5.0, 1.0, sampling_rounds=4)]
    out = phase_shares(records, skip=1)
    assert (out["steps"], out["first_step"], out["last_step"]) == (2, 2, 3)
    phases = out["phases"]
    assert phases["rollout"]["total_s"] == pytest.approx(8.0)
    assert phases["rollout"]["median_s"] == pytest.approx(4.0)
    assert phases["other"]["total_s"] == pytest.approx(0.4)
    assert sum(phases[p]["share"] for p in ("rollout", "reward", "train", "push", "other")) == pytest.approx(1.0)
    assert phases["train"]["share"] == pytest.approx(2.0 / phases["step"]["total_s"])
    assert out["means"]["sampling_rounds"] == 3


def test_null_learner_times_count_as_zero():
    out = phase_shares([record(1, 2.0, 0.0), {**record(2, 2.0, 1.0), "time/train": None}])
    assert out["phases"]["train"]["total_s"] == 0.0


def test_last_run_of_a_file_holding_two_runs():
    records = [record(s, 1.0, 1.0) for s in (1, 2, 3, 1, 2)]
    assert [r["step"] for r in last_run(records)] == [1, 2]
    assert last_run(records[:3]) == records[:3]


def test_project_prints_the_split_of_a_run_dir(tmp_path, capsys):
    path = write_run(tmp_path, [record(1, 9.0, 1.0), record(2, 3.0, 1.0), record(3, 3.0, 1.0)])
    assert metrics_path(tmp_path) == metrics_path(tmp_path / "rl") == metrics_path(path) == path
    assert main(["--project", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "steps 2-3 (2 steps)" in out
    rollout = next(line for line in out.splitlines() if line.startswith("rollout"))
    assert rollout.split()[-1] == f"{6.0 / (2 * 4.11):.1%}"
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        metrics_path(tmp_path / "missing")


def test_scaling_table_rates_and_ratio():
    text = scaling_table("t", "completions/s", {1: [2.0, 2.2, 1.8], 2: [1.0, 1.1, 1.2]}, 100, "workers")
    lines = text.splitlines()
    assert lines[2].split()[:5] == ["1", "2.000", "[1.800,", "2.200]", "50.0"]
    assert lines[3].split()[:6] == ["2", "1.100", "[1.000,", "1.200]", "90.9", "1.82x"]
    assert lines[-1].startswith("ratio workers 2 / 1: 1.82x (per repeat: 2.00, 2.00, 1.50)")
