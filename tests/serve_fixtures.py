"""`gream serve` in this process without Ray: the tiny policy (Office SIDs) answered by the torch
backend (TorchAnswerer, direct mode), as `eval.backend: torch` serves it on a CPU."""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import torch

from cluster.eval_spec import EvalSpec
from cluster.spec import dump_spec
from gream.serve import Recommender, RecommendServer, served_model
from indexing.dataset import split_from_spec
from indexing.sid import SidIndex
from rl_system.rollout.torch_answerer import TorchAnswerer
from tests.rl_fixtures import rl_test_spec, stage_inputs

WIDTH = 3


def torch_recommender(root: Path, tiny_policy, **rerank) -> Recommender:
    """A run folder under `root` holding the tiny policy as its SFT model, and its Recommender;
    `rerank`: the spec's eval.rerank keys (none: not re-ranked)."""
    run = root / "run"
    spec = rl_test_spec(run).model_copy(update={"eval": EvalSpec(ks=[1, WIDTH], beam_width=WIDTH, backend="torch",
                                                                 rerank=rerank)})
    stage_inputs(spec, tiny_policy)
    spec.layout.spec_file.write_text(dump_spec(spec))
    spec, model, index_file = served_model(run, "sft", None, [])
    index = SidIndex.load(index_file)
    return Recommender.build(spec, model, index, TorchAnswerer(model, index, torch.device("cpu")), "sft")


def histories(recommender: Recommender, n: int) -> list[list[int]]:
    """The first `n` validation users' histories of the recommender's run."""
    from cluster.spec import load_spec

    spec = load_spec(Path(recommender.model).parents[1] / "spec.yaml")
    return [list(ex.history) for ex in split_from_spec(spec).valid[:n]]


@contextlib.contextmanager
def running(server: RecommendServer):
    """`server` answering on a daemon thread until the block ends."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
