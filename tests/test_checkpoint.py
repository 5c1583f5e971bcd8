"""Atomic checkpoints and the per-step metrics log."""
import json
import logging

from cluster.checkpoint import CheckpointManager
from cluster.metrics_log import MetricsLog, read_metrics


def _write(payload):
    def write(folder):
        (folder / "state.json").write_text(json.dumps(payload))
        (folder / "sub").mkdir()
        (folder / "sub" / "w.bin").write_bytes(b"x" * 10)
    return write


def test_keep_last_k_and_latest(tmp_path):
    mgr = CheckpointManager(tmp_path / "ckpt", keep=2)
    for step in (5, 10, 15):
        mgr.save(step, _write({"step": step}), {"weight_version": step})
    done = mgr.complete()
    assert [c.step for c in done] == [10, 15]
    assert mgr.latest().meta["weight_version"] == 15
    assert json.loads((mgr.latest().path / "state.json").read_text()) == {"step": 15}
    assert not list((tmp_path / "ckpt").glob(".tmp-*"))


def test_truncated_checkpoint_is_skipped_with_warning(tmp_path, caplog):
    mgr = CheckpointManager(tmp_path / "ckpt", keep=3)
    mgr.save(1, _write({}), {})
    last = mgr.save(2, _write({}), {})
    (last / "sub" / "w.bin").unlink()  # a copy that lost a file
    (tmp_path / "ckpt" / "step-0000003").mkdir()  # a crash before the manifest
    with caplog.at_level(logging.WARNING):
        assert mgr.latest().step == 1
    assert sum("incomplete checkpoint" in r.getMessage() for r in caplog.records) == 2


def test_failed_write_leaves_previous_checkpoint(tmp_path):
    mgr = CheckpointManager(tmp_path / "ckpt", keep=2)
    mgr.save(1, _write({}), {})

    def boom(folder):
        (folder / "half").write_text("partial")
        raise OSError("disk full")

    try:
        mgr.save(2, boom, {})
    except OSError:
        pass
    assert mgr.latest().step == 1
    assert not list((tmp_path / "ckpt").glob(".tmp-*"))


def test_metrics_jsonl_and_resume_truncation(tmp_path):
    log = MetricsLog(tmp_path, tensorboard=True)
    for step in range(1, 5):
        log.write(step, {"reward/mean": 0.1 * step, "lcp_hist": [3, 2, 1, 0]})
    log.close()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]
    assert list((tmp_path / "tensorboard").iterdir())
    log = MetricsLog(tmp_path, tensorboard=False, resume_from_step=2)
    log.write(3, {"reward/mean": 0.9})
    log.close()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["reward/mean"] == 0.9
