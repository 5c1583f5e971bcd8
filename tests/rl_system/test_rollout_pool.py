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
