"""Run-time control files: scale requests and the driver's status."""
import json
import subprocess
import sys
from pathlib import Path

from cluster.control import ControlWatcher, request_scale, status_path, write_end, write_status

ROOT = Path(__file__).resolve().parents[2]


def test_scale_request_is_seen_once(tmp_path):
    (tmp_path / "rl").mkdir()
    watcher = ControlWatcher(tmp_path)
    assert watcher.pending_scale() is None
    request_scale(tmp_path, 3)
    assert watcher.pending_scale() == 3
    assert watcher.pending_scale() is None
    request_scale(tmp_path, 1)
    assert watcher.pending_scale() == 1


def test_watcher_ignores_requests_older_than_the_driver(tmp_path):
    (tmp_path / "rl").mkdir()
    request_scale(tmp_path, 4)
    assert ControlWatcher(tmp_path).pending_scale() is None


def test_status_file(tmp_path):
    write_status(tmp_path, 7, [7, None], restarts=1)
    status = json.loads(status_path(tmp_path).read_text())
    assert status["step"] == 7 and [w["weight_version"] for w in status["workers"]] == [7, None]
    assert status["state"] == "running" and [w["alive"] for w in status["workers"]] == [True, False]
    write_end(tmp_path, "failed", "LearnerFailed")
    ended = json.loads(status_path(tmp_path).read_text())
    assert ended["state"] == "failed" and ended["error"] == "LearnerFailed" and ended["step"] == 7


def test_cli_scale_errors_exit_2(tmp_path):
    res = subprocess.run([sys.executable, "-m", "gream.cli", "scale", str(tmp_path), "--rollout", "2"],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and "no rl/ folder" in res.stderr
    (tmp_path / "rl").mkdir()
    res = subprocess.run([sys.executable, "-m", "gream.cli", "scale", str(tmp_path), "--rollout", "0"],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and "--rollout must be >= 1" in res.stderr
