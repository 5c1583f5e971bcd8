"""Atomic checkpoints and the per-step metrics log."""
import importlib.util
import json
import logging

import pytest

from cluster.checkpoint import BEST_FILE, BestRule, CheckpointManager
from cluster.metrics_log import MetricsLog, MetricsLogError, read_metrics


def _writer(root, keep, best=None):
    mgr = CheckpointManager(root, keep, best)
    mgr.open_run(resume=False)
    return mgr


def _write(payload):
    def write(folder):
        (folder / "state.json").write_text(json.dumps(payload))
        (folder / "sub").mkdir()
        (folder / "sub" / "w.bin").write_bytes(b"x" * 10)
    return write


def test_keep_last_k_and_latest(tmp_path):
    mgr = _writer(tmp_path / "ckpt", keep=2)
    for step in (5, 10, 15):
        mgr.save(step, _write({"step": step}), {"weight_version": step})
    done = mgr.complete()
    assert [c.step for c in done] == [10, 15]
    assert mgr.latest().meta["weight_version"] == 15
    assert json.loads((mgr.latest().path / "state.json").read_text()) == {"step": 15}
    assert not list((tmp_path / "ckpt").glob(".tmp-*"))


def test_truncated_checkpoint_is_skipped_with_warning(tmp_path, caplog):
    mgr = _writer(tmp_path / "ckpt", keep=3)
    mgr.save(1, _write({}), {})
    last = mgr.save(2, _write({}), {})
    (last / "sub" / "w.bin").unlink()  # a copy that lost a file
    (tmp_path / "ckpt" / "step-0000003").mkdir()  # a crash before the manifest
    with caplog.at_level(logging.WARNING):
        assert mgr.latest().step == 1
    assert sum("incomplete checkpoint" in r.getMessage() for r in caplog.records) == 2


def test_failed_write_leaves_previous_checkpoint(tmp_path):
    mgr = _writer(tmp_path / "ckpt", keep=2)
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


def _save_scored(mgr, step, score):
    return mgr.save(step, _write({"step": step}), {"metrics": {} if score is None else {"reward/mean": score}})


def test_best_is_kept_besides_the_last_k(tmp_path):
    mgr = _writer(tmp_path / "ckpt", keep=2, best=BestRule("reward/mean", "max"))
    for step, score in [(1, 0.1), (2, 0.9), (3, 0.3), (4, 0.2), (5, 0.4)]:
        _save_scored(mgr, step, score)
    assert [c.step for c in mgr.complete()] == [2, 4, 5]  # the last 2, and step 2 for its score
    assert json.loads((tmp_path / "ckpt" / BEST_FILE).read_text()) == {
        "step": 2, "path": "step-0000002", "metric": "reward/mean", "mode": "max", "value": 0.9}
    # A reader without the rule (gream export, gream status) finds the same one through best.json.
    reader = CheckpointManager(tmp_path / "ckpt", keep=1 << 30)
    assert reader.best().step == 2
    assert json.loads((reader.best().path / "state.json").read_text()) == {"step": 2}

    _save_scored(mgr, 6, 0.95)  # a new best: the old one is an ordinary checkpoint again, and pruned
    assert [c.step for c in mgr.complete()] == [5, 6] and reader.best().step == 6


def test_best_min_mode_ties_and_unscored_checkpoints(tmp_path):
    mgr = _writer(tmp_path / "ckpt", keep=1, best=BestRule("reward/mean", "min"))
    assert mgr.best() is None
    _save_scored(mgr, 1, None)  # no value for the metric (e.g. no step since the last checkpoint)
    assert mgr.best() is None and not (tmp_path / "ckpt" / BEST_FILE).exists()
    _save_scored(mgr, 2, 0.5)
    _save_scored(mgr, 3, 0.2)
    _save_scored(mgr, 4, float("nan"))  # not a candidate, never the best
    _save_scored(mgr, 5, 0.2)  # a tie goes to the later step
    assert mgr.best().step == 5 and [c.step for c in mgr.complete()] == [5]
    _save_scored(mgr, 6, 0.7)
    assert mgr.best().step == 5 and [c.step for c in mgr.complete()] == [5, 6]


def test_best_that_lost_a_file_is_not_returned(tmp_path):
    mgr = _writer(tmp_path / "ckpt", keep=1, best=BestRule("reward/mean"))
    best = _save_scored(mgr, 1, 0.9)
    _save_scored(mgr, 2, 0.1)
    (best / "sub" / "w.bin").unlink()  # best.json still names step 1, but it is incomplete now
    assert mgr.best() is None
    assert mgr.latest().step == 2


def test_checkpoint_score_is_the_mean_since_the_last_checkpoint():
    from cluster.spec import JobSpec, SpecError
    from rl_system.train import _ScoreWindow

    window = _ScoreWindow(JobSpec(name="x", checkpoint={"best_metric": "kl", "best_mode": "min"}))
    for kl in (None, 0.2, 0.4):  # null: a step without an update has no KL
        window.add({"reward/mean": 0.0, "kl": kl})
    assert window.take() == {"kl": pytest.approx(0.3)}
    assert window.take() == {}  # a new window per checkpoint

    typo = _ScoreWindow(JobSpec(name="x", checkpoint={"best_metric": "reward/meen"}, source="job.yaml"))
    with pytest.raises(SpecError, match=r"job.yaml: key 'checkpoint.best_metric': 'reward/meen' is not a per-step "
                                        r"RL metric; expected one of: kl, reward/mean"):
        typo.add({"reward/mean": 0.1, "kl": 0.0, "lcp_hist": [1, 2]})


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
    MetricsLog(tmp_path, tensorboard=False).close()  # a fresh run does not append to the old curve
    assert read_metrics(tmp_path / "metrics.jsonl") == []


def test_wandb_without_the_package_is_a_clear_error(tmp_path):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here; this checks the message when it is not")
    with pytest.raises(MetricsLogError, match="logging.wandb_project is 'proj' but the wandb package is not installed"):
        MetricsLog(tmp_path / "rl", tensorboard=False, wandb_project="proj")


def test_half_written_metrics_line_is_skipped_on_resume(tmp_path, caplog):
    log = MetricsLog(tmp_path, tensorboard=False)
    for step in (1, 2, 3):
        log.write(step, {"reward/mean": 0.1 * step})
    log.close()
    path = tmp_path / "metrics.jsonl"
    path.write_text(path.read_text() + '{"step": 4, "reward/me')  # killed mid-append
    with caplog.at_level(logging.WARNING):
        log = MetricsLog(tmp_path, tensorboard=False, resume_from_step=2)
    log.write(3, {"reward/mean": 0.9})
    log.close()
    assert [(r["step"], r["reward/mean"]) for r in read_metrics(path)] == [(1, 0.1), (2, 0.2), (3, 0.9)]
    assert any("half-written last line" in r.getMessage() for r in caplog.records)

    path.write_text('{"step": 1}\n{"step": 2, "x"\n{"step": 3}\n')  # not a crash: damage mid-file
    with pytest.raises(MetricsLogError, match="line 2 is not JSON"):
        MetricsLog(tmp_path, tensorboard=False, resume_from_step=3)


def test_rl_model_is_the_best_checkpoint_only_when_validated_and_selected_by_best():
    from cluster.spec import JobSpec
    from rl_system.train import exports_best

    assert exports_best(JobSpec(name="x"), validated=True)
    assert not exports_best(JobSpec(name="x"), validated=False)  # no accuracy to rank by: the last weights
    assert not exports_best(JobSpec(name="x", checkpoint={"select": "last"}), validated=True)
