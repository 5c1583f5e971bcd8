"""Shared pytest fixtures. Each section says who owns it; add new sections rather than editing others."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
# A test that takes one of these fixtures starts Ray (and a vLLM engine): it is `heavy`. Modules that
# start Ray, vLLM or DeepSpeed some other way (a subprocess, a trainer) say `pytestmark = heavy`.
HEAVY_FIXTURES = {"ray_cluster", "rollout_worker"}


def pytest_collection_modifyitems(items):
    for item in items:
        if HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.heavy)


# =====================================================================================
# Ray + vLLM rollout fixtures (rl_system: rollout worker, beam search, weight sync).
# Ray starts once per session; modules that need Ray should take `ray_cluster` instead of calling
# ray.init / ray.shutdown themselves, which would tear down the shared rollout worker.
# =====================================================================================
@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory) -> Path:
    """The model cache (imported SmolLM2) for this session only, shared by its tests and the gream
    processes they start: one import per session, never the user's ~/.cache/gream."""
    from sft.import_smollm2 import CACHE_ENV

    root = tmp_path_factory.mktemp("model_cache")
    os.environ[CACHE_ENV] = str(root)
    return root


@dataclass(frozen=True)
class TinyPolicy:
    model_dir: Path  # Hugging Face folder (tiny Qwen3 + SID and reasoning tokens)
    constraint_path: Path  # ConstraintTable JSON for the Office index
    index: object  # indexing.sid.SidIndex


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory) -> TinyPolicy:
    """The embedded tiny Qwen3 with the bundled Office SIDs (6 levels after dedup) added."""
    from cluster.spec import JobSpec
    from indexing.importer import import_index
    from rl_system.rollout.engine import untrained_sid_policy

    root = tmp_path_factory.mktemp("tiny_policy")
    spec = JobSpec(name="tiny", run_dir=str(root), data={"path": str(REPO / "data/office")},
                   model={"hidden_size": 64, "num_layers": 2, "num_heads": 1, "bpe_vocab": 400})
    index = import_index(REPO / "data/office/Office.unitok5.index.json").index
    model_dir, constraint = untrained_sid_policy(spec, index, root)
    return TinyPolicy(model_dir, constraint, index)


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def rollout_worker(ray_cluster, tiny_policy):
    """One RolloutWorker actor (vLLM-CPU engine, fp32) for the whole session (~30-60 s to start)."""
    from cluster.device import resolve
    from rl_system.rollout.engine import EngineConfig
    from rl_system.rollout.worker import start_rollout_worker

    cfg = EngineConfig(model=str(tiny_policy.model_dir), constraint_path=str(tiny_policy.constraint_path),
                       placement=resolve("cpu"), dtype="float32", kv_cache_gib=1, max_model_len=512,
                       max_num_seqs=128)
    worker = start_rollout_worker(cfg)
    ray_cluster.get(worker.weight_version.remote())  # waits for the engine
    yield worker
    ray_cluster.kill(worker)


# =====================================================================================
# Evaluated stages (eval protocol: ranks.json, gream compare, benchmarks/quality.py).
# =====================================================================================
@pytest.fixture(scope="session")
def evaluated_run(rollout_worker, tiny_policy, tmp_path_factory):
    """A run folder with real sft/, rl/ and baselines/sasrec/ evaluations (tests/eval_fixtures.py)."""
    from tests.eval_fixtures import evaluated_run as build

    return build(tmp_path_factory.mktemp("evaluated"), rollout_worker, tiny_policy)


# =====================================================================================
# Generate, then re-rank (eval.rerank): a run folder served and evaluated by the torch backend.
# =====================================================================================
@pytest.fixture(scope="session")
def rerank_run(tiny_policy, tmp_path_factory):
    """A run folder with the tiny policy as its SFT model, the Office SID index, and a SASRec trained
    one epoch on the full split (baselines/sasrec: the scorer eval.rerank.path names). No Ray, no vLLM."""
    from sft.sasrec import SasrecConfig
    from sft.sasrec_eval import run
    from tests.eval_fixtures import one_thread
    from tests.rl_fixtures import rl_test_spec, stage_inputs

    spec = rl_test_spec(tmp_path_factory.mktemp("rerank") / "run")
    spec = spec.model_copy(update={"eval": spec.eval.model_copy(update={"max_users": 64, "backend": "torch"})})
    stage_inputs(spec, tiny_policy)
    with one_thread():
        run(spec, SasrecConfig(max_epochs=1, batch_size=256, lr=3e-3))
    return spec
