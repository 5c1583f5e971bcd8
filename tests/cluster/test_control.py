"""Run-time control files: scale requests and the driver's status."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.control import ControlWatcher, control_path, request_scale, status_path, write_end, write_status

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


def _request(size) -> bytes:
    """What `gream scale` writes, with the size edited by hand."""
    return json.dumps({"rollout_workers": size, "requested": time.time()}).encode()


NOT_A_REQUEST = {
    "0": (b"0", "holds 0; expected a JSON object {\"rollout_workers\": N}"),
    "a string": (b'"4"', "holds '4'; expected a JSON object {\"rollout_workers\": N}"),
    "a list": (b"[2]", "holds [2]; expected a JSON object {\"rollout_workers\": N}"),
    "size 0": (_request(0), "rollout_workers is 0; expected an integer >= 1"),
    "size a string": (_request("2"), "rollout_workers is '2'; expected an integer >= 1"),
    "size a list": (_request([2]), "rollout_workers is [2]; expected an integer >= 1"),
    "size true": (_request(True), "rollout_workers is True; expected an integer >= 1"),
    "size 2.5": (_request(2.5), "rollout_workers is 2.5; expected an integer >= 1"),
    "no size": (json.dumps({"requested": 1.0}).encode(), "rollout_workers is None; expected an integer >= 1"),
}


@pytest.mark.parametrize("case", NOT_A_REQUEST)
def test_a_control_file_that_is_not_a_request_is_ignored_with_a_warning(tmp_path, caplog, case):
    content, why = NOT_A_REQUEST[case]
    (tmp_path / "rl").mkdir()
    watcher = ControlWatcher(tmp_path)
    control_path(tmp_path).write_bytes(content)
    with caplog.at_level("WARNING", logger="cluster.control"):
        assert watcher.pending_scale() is None
        assert watcher.pending_scale() is None  # one warning per content, not one per step
    assert [r.fields["reason"] for r in caplog.records] == [f"{control_path(tmp_path)}: {why}"]
    request_scale(tmp_path, 2)
    assert watcher.pending_scale() == 2  # the next request goes through


def test_a_control_file_that_is_not_json_is_ignored_with_a_warning(tmp_path, caplog):
    (tmp_path / "rl").mkdir()
    watcher = ControlWatcher(tmp_path)
    control_path(tmp_path).write_bytes(b"\xff{")
    with caplog.at_level("WARNING", logger="cluster.control"):
        assert watcher.pending_scale() is None
    [reason] = [r.fields["reason"] for r in caplog.records]
    assert reason.startswith(f"{control_path(tmp_path)}: not UTF-8 JSON (") and 'expected {"rollout_workers": N}' in reason


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
