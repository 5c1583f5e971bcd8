"""Checkpoints that cannot betray a run, on hand-made folders with real files: run fencing, one
writer at a time (a live driver's lock, the writer number), sizes and hashes in the manifest,
manifests of the wrong shape or naming files outside the folder, fallback past a checkpoint that
fails to verify or load, stale temporary folders."""
import hashlib
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cluster.checkpoint import RUN_FILE, CheckpointError, CheckpointManager, file_digest

SHARD = "learner/model_states.pt"
LOAD_FAILURES = (OSError, RuntimeError, EOFError, pickle.UnpicklingError)  # what torch.load raises on bad bytes


def _state(step: int) -> dict[str, torch.Tensor]:
    return {"w": torch.full((64, 64), float(step)), "b": torch.arange(64, dtype=torch.float32) * step}


def _save_state(mgr, step, shard_bytes=None):
    """A checkpoint whose shard is a real torch state dict (or, as written, `shard_bytes`)."""
    def write(folder):
        (folder / "learner").mkdir()
        torch.save(_state(step), folder / SHARD)
        if shard_bytes is not None:
            (folder / SHARD).write_bytes(shard_bytes((folder / SHARD).read_bytes()))
        (folder / "driver.json").write_text(json.dumps({"step": step}))
    return mgr.save(step, write, {"weight_version": step})


def _load(ckpt):
    return torch.load(ckpt.path / SHARD, weights_only=True)


def _writer(root, keep=10, resume=False):
    mgr = CheckpointManager(root, keep)
    mgr.open_run(resume)
    return mgr


def _snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_manifest_records_run_size_and_sha256_of_every_file(tmp_path):
    mgr = _writer(tmp_path)
    path = _save_state(mgr, 1)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["run_id"] == mgr.run_id == json.loads((tmp_path / RUN_FILE).read_text())["run_id"]
    assert set(manifest["files"]) == {SHARD, "driver.json"}
    for name, entry in manifest["files"].items():
        data = (path / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_fresh_run_refuses_a_folder_with_another_runs_checkpoints(tmp_path):
    first = _writer(tmp_path)
    for step in (1, 2):
        _save_state(first, step)
    first.close()  # that run's driver ended
    (tmp_path / ".tmp-step-0000003-4242").mkdir()  # that run's crash debris is its own to clean up
    before = _snapshot(tmp_path)
    with pytest.raises(CheckpointError) as err:
        _writer(tmp_path)  # a new run in the same folder
    assert err.value.exit_code == 2
    message = str(err.value)
    assert f"{tmp_path} holds checkpoints (step-0000001, step-0000002) of another run" in message
    assert "pass --resume" in message and "new run_dir" in message and "nothing there was deleted" in message
    assert _snapshot(tmp_path) == before and (tmp_path / ".tmp-step-0000003-4242").is_dir()

    resumed = _writer(tmp_path, resume=True)  # --resume continues the same run, under the same id
    assert resumed.run_id == first.run_id and resumed.latest().step == 2


def test_resume_without_run_file_refuses_checkpoints_of_an_unknown_run(tmp_path):
    _save_state(_writer(tmp_path), 1)
    (tmp_path / RUN_FILE).unlink()
    before = _snapshot(tmp_path)
    with pytest.raises(CheckpointError, match=f"no {RUN_FILE} naming their run"):
        _writer(tmp_path, resume=True)
    assert _snapshot(tmp_path) == before


def test_keep_last_k_never_trades_this_runs_checkpoints_for_an_older_runs(tmp_path):
    """The fence keeps another run's checkpoints out; if some are there anyway (copied in after the
    run opened), the writer neither loads, prunes, ranks nor overwrites them."""
    older, other = tmp_path / "older", tmp_path / "run"
    old_run = _writer(older)
    for step in (7, 8, 9):
        _save_state(old_run, step)
    mgr = _writer(other, keep=2)
    for step in (8, 9):
        shutil.copytree(older / f"step-000000{step}", other / f"step-000000{step}")
    for step in (1, 2, 3):
        _save_state(mgr, step)
    assert [c.step for c in mgr.complete()] == [2, 3] and mgr.latest().step == 3
    assert sorted(p.name for p in other.glob("step-*")) == ["step-0000002", "step-0000003", "step-0000008",
                                                           "step-0000009"]
    before = _snapshot(other / "step-0000008")
    with pytest.raises(CheckpointError, match=f"step-0000008 belongs to run {old_run.run_id}"):
        _save_state(mgr, 8)
    assert _snapshot(other / "step-0000008") == before and not list(other.glob(".tmp-*"))
    # Readers (gream status, gream export) see every run's complete checkpoints.
    assert [c.step for c in CheckpointManager(other, keep=1 << 30).complete()] == [2, 3, 8, 9]


def test_truncated_shard_falls_back_to_the_previous_checkpoint(tmp_path, caplog):
    mgr = _writer(tmp_path)
    for step in (1, 2):
        _save_state(mgr, step)
    shard = tmp_path / "step-0000002" / SHARD
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[: size // 2])  # a copy cut short
    with caplog.at_level(logging.WARNING):
        ckpt, state = mgr.load_latest(_load, LOAD_FAILURES)
    assert ckpt.step == 1 and torch.equal(state["w"], _state(1)["w"])
    warned = [r.fields for r in caplog.records if "incomplete checkpoint" in r.getMessage()]
    assert warned == [{"path": str(tmp_path / "step-0000002"),
                       "problem": f"{SHARD} has {size // 2} bytes, the manifest records {size}"}]


def test_corrupt_or_unloadable_shard_falls_back_with_a_warning(tmp_path, caplog):
    mgr = _writer(tmp_path)
    _save_state(mgr, 1)
    _save_state(mgr, 2, shard_bytes=lambda data: data[: len(data) - 100])  # written short: hashes agree
    _save_state(mgr, 3)
    shard = tmp_path / "step-0000003" / SHARD
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    shard.write_bytes(bytes(data))
    assert [c.step for c in mgr.complete()] == [1, 2, 3]  # sizes agree: a listing cannot tell
    with caplog.at_level(logging.WARNING):
        ckpt, state = mgr.load_latest(_load, LOAD_FAILURES)
    assert ckpt.step == 1 and torch.equal(state["b"], _state(1)["b"])
    problems = [r.fields["problem"] for r in caplog.records if "cannot be loaded" in r.getMessage()]
    assert problems[0] == f"{SHARD} does not match the size and sha256 in the manifest"
    assert problems[1].startswith("loading failed: ")


def test_no_loadable_checkpoint_is_an_exit_2_error(tmp_path):
    mgr = _writer(tmp_path)
    assert mgr.load_latest(_load, LOAD_FAILURES) is None  # nothing saved yet: start from the beginning
    for step in (1, 2):
        _save_state(mgr, step)
        shard = tmp_path / f"step-000000{step}" / SHARD
        shard.write_bytes(b"\0" * shard.stat().st_size)
    with pytest.raises(CheckpointError) as err:
        mgr.load_latest(_load, LOAD_FAILURES)
    assert err.value.exit_code == 2
    assert str(err.value).startswith(f"{tmp_path}: no checkpoint of this run can be loaded; step-0000002 (")
    assert "step-0000001 (" in str(err.value)

    for step in (1, 2):
        (tmp_path / f"step-000000{step}" / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="none of its step folders is a complete checkpoint of this run"):
        mgr.load_latest(_load, LOAD_FAILURES)


def test_stale_temporary_folders_are_removed_when_a_run_opens(tmp_path, caplog):
    mgr = _writer(tmp_path)
    _save_state(mgr, 1)
    crashed = tmp_path / ".tmp-step-0000002-4242"  # a writer killed mid-save
    (crashed / "learner").mkdir(parents=True)
    (crashed / SHARD).write_bytes(b"partial")
    (tmp_path / ".tmp-best.json-4242").write_text("{")
    mgr.close()
    with caplog.at_level(logging.WARNING):
        resumed = _writer(tmp_path, resume=True)
    assert not list(tmp_path.glob(".tmp-*"))
    assert sum("crashed checkpoint write" in r.getMessage() for r in caplog.records) == 2
    assert resumed.latest().step == 1



# The old driver of a run, alive: it opens the run and waits.
_LIVE_WRITER = """
import sys
from pathlib import Path
from cluster.checkpoint import CheckpointManager

writer = CheckpointManager(Path(sys.argv[1]), keep=2)
writer.open_run(resume=True)
print("open", flush=True)
sys.stdin.read()
"""


def test_resume_while_the_old_driver_lives_is_refused(tmp_path):
    first = _writer(tmp_path, keep=2)
    for step in (1, 2):
        _save_state(first, step)
    first.close()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    old = subprocess.Popen([sys.executable, "-c", _LIVE_WRITER, str(tmp_path)], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert old.stdout.readline().strip() == "open"
        before = _snapshot(tmp_path)
        with pytest.raises(CheckpointError, match=f"^{tmp_path} is being written by another driver \\(pid {old.pid} "
                                                  "on .*\\); stop it .* first; nothing was changed$") as err:
            _writer(tmp_path, keep=2, resume=True)
        assert err.value.exit_code == 2 and _snapshot(tmp_path) == before
    finally:
        old.kill()  # as kill -9 would: the kernel releases its lock
        old.wait()
    assert _writer(tmp_path, keep=2, resume=True).latest().step == 2


def test_a_writer_a_later_one_replaced_stops_before_renaming_or_pruning(tmp_path):
    """Where the lock is not shared (machines on a file system without flock), the writer number in
    run.json fences: the replaced writer neither renames its checkpoint nor prunes the new one's."""
    old = _writer(tmp_path, keep=2)
    for step in (1, 2):
        _save_state(old, step)
    old.close()  # its lock unseen by the next writer, as on such a file system
    new = _writer(tmp_path, keep=2, resume=True)
    _save_state(new, 3)
    before = _snapshot(tmp_path)
    with pytest.raises(CheckpointError, match=f"another writer opened this run after this one .writer 1; {RUN_FILE} "
                                              "now holds .* this one stops without renaming or pruning"):
        _save_state(old, 4)
    assert _snapshot(tmp_path) == before and not list(tmp_path.glob(".tmp-*"))
    _save_state(new, 4)
    assert [c.step for c in new.complete()] == [3, 4]


WRONG_SHAPES = {
    "a list": lambda m: [m],
    "step a string": lambda m: {**m, "step": "2"},
    "no step": lambda m: {k: v for k, v in m.items() if k != "step"},
    "files a list": lambda m: {**m, "files": list(m["files"])},
    "sizes alone": lambda m: {**m, "files": {n: e["bytes"] for n, e in m["files"].items()}},
    "bytes a string": lambda m: {**m, "files": {n: {**e, "bytes": str(e["bytes"])} for n, e in m["files"].items()}},
    "metrics a list": lambda m: {**m, "metrics": [0.5]},
}


@pytest.mark.parametrize("shape", WRONG_SHAPES)
def test_manifest_of_the_wrong_shape_is_skipped_like_a_torn_one(tmp_path, caplog, shape):
    mgr = _writer(tmp_path)
    _save_state(mgr, 1)
    manifest = _save_state(mgr, 2) / "manifest.json"
    manifest.write_text(json.dumps(WRONG_SHAPES[shape](json.loads(manifest.read_text()))))
    with caplog.at_level(logging.WARNING):
        assert [c.step for c in mgr.complete()] == [1]
        ckpt, state = mgr.load_latest(_load, LOAD_FAILURES)
    assert ckpt.step == 1 and torch.equal(state["w"], _state(1)["w"])
    assert [c.step for c in CheckpointManager(tmp_path, keep=1 << 30).complete()] == [1]  # gream status, export
    assert any("incomplete checkpoint" in r.getMessage() and r.fields["path"].endswith("step-0000002")
               for r in caplog.records)


@pytest.mark.parametrize("outside", ["absolute", "climbing"])
def test_manifest_naming_a_file_outside_the_folder_is_refused(tmp_path, caplog, outside):
    mgr = _writer(tmp_path / "ckpt")
    _save_state(mgr, 1)
    manifest = _save_state(mgr, 2) / "manifest.json"
    secret = tmp_path / "secret.pt"
    torch.save(_state(9), secret)
    name = str(secret) if outside == "absolute" else "../../secret.pt"
    meta = json.loads(manifest.read_text())
    meta["files"][name] = file_digest(secret)  # its size and hash agree: only the name is wrong
    manifest.write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING):
        ckpt, _ = mgr.load_latest(_load, LOAD_FAILURES)
    assert ckpt.step == 1
    problems = [r.fields["problem"] for r in caplog.records if "incomplete checkpoint" in r.getMessage()]
    assert problems[0] == f"the manifest names {name!r}, a path outside the checkpoint folder"


def test_a_file_the_manifest_does_not_list_fails_verification(tmp_path, caplog):
    """A folder that verifies holds exactly what its manifest hashes: one manifest's sha256 vouches for it."""
    mgr = _writer(tmp_path)
    _save_state(mgr, 1)
    path = _save_state(mgr, 2)
    torch.save(_state(9), path / "learner" / "extra_states.pt")  # dropped into a copy on its way
    with caplog.at_level(logging.WARNING):
        ckpt, _ = mgr.load_latest(_load, LOAD_FAILURES)
    assert ckpt.step == 1
    problems = [r.fields["problem"] for r in caplog.records if "cannot be loaded" in r.getMessage()]
    assert problems == ["learner/extra_states.pt is in the folder but not in the manifest"]
