"""The rollout pool with a real DeepSpeed learner: weight push parity, scaling, worker failure."""
from __future__ import annotations

import pytest
import ray

from tests.rl_fixtures import rl_test_spec, stage_inputs


@pytest.fixture(scope="module")
def learner_and_pool(ray_cluster, tiny_policy, tmp_path_factory):
    from cluster.placement import ranks_group
    from rl_system.learner.group import LearnerGroup
    from rl_system.rollout.pool import RolloutPool

    spec = rl_test_spec(tmp_path_factory.mktemp("push"))
    stage_inputs(spec, tiny_policy)
    model = spec.layout.model("sft")
    group = ranks_group(spec.name, "learner", spec.cluster.learner)
    learner = LearnerGroup.from_spec(spec, model, group)
    pool = RolloutPool.from_spec(spec, model, tiny_policy.index)
    pool.attach_learner(learner, version=0)
    yield spec, learner, pool
    pool.shutdown()
    learner.shutdown()
    group.remove()


def test_after_push_workers_match_learner_logprobs(learner_and_pool):
    from rl_system.messages import TrainBatch

    spec, learner, pool = learner_and_pool
    groups = pool.generate(["<|im_start|>user\nNext item?<|im_end|>\n<|im_start|>assistant\n"] * 2, n=4,
                           temperature=1.0, max_tokens=8, mode="direct")
    rows = [(g.prompt_ids, c.token_ids) for g in groups for c in g.completions]
    batch = TrainBatch([p for p, _ in rows], [c for _, c in rows], [1.0, -1.0] * 4)
    before = learner.logprobs(batch)
    learner.train_step(batch)
    after = learner.logprobs(batch)
    assert max(abs(a - b) for ra, rb in zip(after, before) for a, b in zip(ra, rb)) > 1e-3, "the update moved nothing"

    pool.push(version=1)
    assert pool.versions() == [1, 1]
    prompt, completion = rows[0]
    for worker in pool.workers:
        served = ray.get(worker.score.remote(prompt, completion))
        assert served == pytest.approx(after[0], abs=1e-3)


def test_scale_up_serves_current_version(learner_and_pool):
    spec, learner, pool = learner_and_pool
    pool.push(version=2)
    pool.scale(1)
    assert pool.versions() == [2]
    pool.scale(2)
    assert pool.versions() == [2, 2]
    assert [s.cpu_slot for s in pool.slots] == [0, 1]  # one node: each engine binds cores of its own
    groups = pool.generate(["<|im_start|>user\nNext item?<|im_end|>\n<|im_start|>assistant\n"] * 3, n=2,
                           temperature=1.0, max_tokens=8, mode="direct")
    assert {g.weight_version for g in groups} == {2}


def test_dead_worker_is_replaced_and_its_prompts_requeued(learner_and_pool):
    spec, learner, pool = learner_and_pool
    pool.push(version=3)
    ray.kill(pool.workers[0])
    prompts = [f"<|im_start|>user\nNext item {i}?<|im_end|>\n<|im_start|>assistant\n" for i in range(6)]
    groups = pool.generate(prompts, n=2, temperature=1.0, max_tokens=8, mode="direct")
    assert len(groups) == 6 and all(len(g.completions) == 2 for g in groups)
    assert pool.restarts == 1
    assert [s.cpu_slot for s in pool.slots] == [0, 1]  # the replacement took the cores its predecessor freed
    assert pool.versions() == [3, 3] and {g.weight_version for g in groups} == {3}


PROMPTS = [f"<|im_start|>user\nNext item {i}?<|im_end|>\n<|im_start|>assistant\n" for i in range(4)]


def _serves(pool, version: int) -> None:
    """Every worker at `version`, and a generate served whole from it."""
    assert pool.versions() == [version] * len(pool.slots)
    groups = pool.generate(PROMPTS, n=2, temperature=1.0, max_tokens=4, mode="direct")
    assert len(groups) == len(PROMPTS) and all(len(g.completions) == 2 for g in groups)
    assert {g.weight_version for g in groups} == {version}


def test_worker_lost_before_a_push_is_replaced_and_the_push_completes(learner_and_pool):
    spec, learner, pool = learner_and_pool
    restarts = pool.restarts
    ray.kill(pool.workers[1])  # the learner's broadcasts fail on it while the live worker is mid-receive
    stats = pool.push(version=4)
    assert stats["version"] == 4 and pool.restarts == restarts + 1
    _serves(pool, 4)


def test_worker_lost_before_a_resync_is_replaced(learner_and_pool):
    spec, learner, pool = learner_and_pool
    restarts = pool.restarts
    ray.kill(pool.workers[0])
    assert pool.scale(2)  # same size: only the re-sync, which finds the dead member before forming
    assert pool.restarts == restarts + 1
    _serves(pool, pool.version)  # the version earlier tests left: each test also runs alone (-k)


def test_unplaceable_scale_is_refused_and_the_pool_goes_on(learner_and_pool, caplog):
    spec, learner, pool = learner_and_pool
    before = [s.actor for s in pool.slots]
    groups_before = _live_placement_groups()
    pool.rollout = pool.rollout.model_copy(update={"scale_timeout_s": 3})
    with caplog.at_level("WARNING", logger="rl_system.rollout.pool"):
        assert pool.scale(50) is False
    refused = [r for r in caplog.records if r.getMessage().startswith("scale request refused")]
    assert refused and refused[0].fields["requested"] == 50 and "free" in refused[0].fields["reason"]
    assert [s.actor for s in pool.slots] == before and _live_placement_groups() == groups_before
    _serves(pool, pool.version)


def test_scale_whose_new_engine_fails_to_start_is_rolled_back(learner_and_pool, tmp_path, caplog):
    from dataclasses import replace

    spec, learner, pool = learner_and_pool
    before, restarts, cfg = [s.actor for s in pool.slots], pool.restarts, pool.cfg
    groups_before = _live_placement_groups()
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "config.json").write_text("{")  # a model the engine cannot build, as a wrong path or a torn copy
    pool.cfg = replace(cfg, model=str(broken))
    try:
        with caplog.at_level("WARNING", logger="rl_system.rollout.pool"):
            assert pool.scale(len(before) + 1) is False
    finally:
        pool.cfg = cfg
    refused = [r for r in caplog.records if r.getMessage().startswith("scale request refused")]
    assert refused and refused[0].fields["requested"] == len(before) + 1
    assert refused[0].fields["reason"].startswith(f"worker {len(before)}: ")
    assert [s.actor for s in pool.slots] == before and pool.restarts == restarts
    assert _live_placement_groups() == groups_before
    _serves(pool, pool.version)


def _live_placement_groups() -> int:
    return sum(g["state"] != "REMOVED" for g in ray.util.placement_group_table().values())


def test_hung_worker_times_out_and_is_replaced(learner_and_pool):
    import contextlib
    import os
    import signal

    spec, learner, pool = learner_and_pool
    restarts, rollout = pool.restarts, pool.rollout
    pid = ray.get(pool.workers[0].__ray_call__.remote(lambda self: os.getpid()))
    os.kill(pid, signal.SIGSTOP)  # alive but silent: what a wedged engine looks like from outside
    pool.rollout = rollout.model_copy(update={"call_timeout_s": 12})
    try:
        groups = pool.generate(PROMPTS, n=2, temperature=1.0, max_tokens=4, mode="direct")
    finally:
        pool.rollout = rollout
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # in case the pool had not
    assert len(groups) == len(PROMPTS) and all(len(g.completions) == 2 for g in groups)
    assert pool.restarts == restarts + 1
    _serves(pool, pool.version)


def test_hung_receiver_is_replaced_not_taken_for_the_learner(learner_and_pool):
    """A worker wedged holding its engine lock (a generation that never ends, say) answers version
    queries but never takes a push: the sender names it once cluster.rollout.call_timeout_s has
    passed, and the pool replaces it and pushes again; the learner is not blamed."""
    spec, learner, pool = learner_and_pool
    restarts, rollout, version = pool.restarts, pool.rollout, pool.version
    pool.rollout = rollout.model_copy(update={"call_timeout_s": 8})
    try:
        assert pool.scale(len(pool.slots))  # the push group formed again, under the short timeout
        wedged = pool.workers[0]
        ray.get(wedged.__ray_call__.remote(lambda self: self._lock.acquire()))
        assert ray.get(wedged.weight_version.remote(), timeout=5) == version  # alive, to every probe
        stats = pool.push(version=version + 1)
    finally:
        pool.rollout = rollout
    assert stats["version"] == version + 1 and pool.restarts == restarts + 1 and pool.workers[0] != wedged
    _serves(pool, version + 1)


def test_set_cpu_bind_replaces_its_own_value_but_keeps_the_users(monkeypatch):
    import os

    from rl_system.rollout import engine as vllm_engine

    cores = sorted(os.sched_getaffinity(0))
    monkeypatch.delenv(vllm_engine.BIND_VAR, raising=False)
    monkeypatch.setattr(vllm_engine, "_bind_we_set", None)
    first = vllm_engine.set_cpu_bind(slot=0, threads=1, ranks=1)
    assert first == str(cores[0])
    # A second in-process engine in another slot gets its own cores, not the first engine's.
    assert vllm_engine.set_cpu_bind(slot=1, threads=1, ranks=1) == str(cores[1 % len(cores)])
    monkeypatch.setenv(vllm_engine.BIND_VAR, "0-1")
    assert vllm_engine.set_cpu_bind(slot=1, threads=1, ranks=1) == "0-1"


def test_cpu_bind_list_gives_each_engine_its_own_cores():
    from rl_system.rollout.engine import cpu_bind_list

    assert cpu_bind_list([0, 1], slot=0, threads=1, ranks=1) == "0"
    assert cpu_bind_list([0, 1], slot=1, threads=1, ranks=1) == "1"
    assert cpu_bind_list([0, 1], slot=2, threads=1, ranks=1) == "0"  # more engines than cores: wrap
    assert cpu_bind_list([0, 1, 2, 3, 4, 5, 6, 7], slot=1, threads=2, ranks=2) == "4,5|6,7"
    assert cpu_bind_list([2, 3, 5], slot=0, threads=2, ranks=2) == "2,3|2,5"
