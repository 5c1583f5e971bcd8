"""`gream rl SPEC`: the RL driver.

    placement groups -> learner + rollout pool + reward service
    for each step: generate -> reward -> filter -> train -> push weights -> log -> save

Everything else (how a group is sampled, how the learner steps, how weights travel) lives in its
own module; this file is the loop a reader should be able to hold in their head.
"""
from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path

from ray.exceptions import RayActorError

from cluster.checkpoint import CheckpointManager
from cluster.control import ControlWatcher, write_status
from cluster.errors import MissingArtefact
from cluster.logs import fields
from cluster.metrics_log import MetricsLog
from cluster.placement import init_ray, learner_group
from indexing.dataset import split_from_spec
from indexing.sid import SidIndex
from rl_system.dynamic_sampling import BatchFiller
from rl_system.groups import GroupSampler, rollout_metrics, train_batch
from rl_system.learner import LearnerGroup
from rl_system.prompt_source import PromptSource
from rl_system.reward_pool import RewardPool
from rl_system.rollout_pool import RolloutPool

log = logging.getLogger(__name__)


LEARNER_KEYS = ("kl", "entropy", "clip_fraction", "grad_norm", "loss", "pg_loss")


class LearnerFailed(RuntimeError):
    exit_code = 4


class _StopFlag:
    """SIGTERM/SIGINT ask the loop to checkpoint after the step in flight and stop."""

    def __init__(self):
        self.raised: int | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._set)

    def _set(self, signum, _frame) -> None:
        log.warning("signal received: checkpointing after this step", extra=fields(signal=signum))
        self.raised = signum


def sft_model_dir(spec) -> Path:
    model = spec.stage_dir("sft") / "model"
    if not (model / "config.json").exists():
        raise MissingArtefact(f"{model}: no SFT model to start RL from; run the sft stage first")
    return model


def run(spec, resume: bool = False) -> Path:
    from transformers import AutoTokenizer

    from indexing.build import index_path

    init_ray(spec)
    rl, rl_dir = spec.rl, spec.stage_dir("rl")
    start_model, idx_path = sft_model_dir(spec), index_path(spec)
    index = SidIndex.load(idx_path)
    tokenizer = AutoTokenizer.from_pretrained(start_model)

    learner_pg = learner_group(spec)
    learner = LearnerGroup.from_spec(spec, start_model, learner_pg)
    pool = RolloutPool(spec, start_model, index)
    rewards = RewardPool.from_spec(spec, idx_path)
    source = PromptSource(split_from_spec(spec).train, index, tokenizer, rl.seed, reasoning=rl.mode == "reasoning")
    sampler = GroupSampler(spec, pool, rewards, source, tokenizer.get_vocab().get("<answer>"))
    filler = BatchFiller(rl.prompts_per_step, rl.max_resample_rounds)
    ckpts = CheckpointManager(rl_dir / "checkpoints", spec.checkpoint.keep)

    step = _restore(spec, ckpts, learner, source) if resume else 0
    pool.attach_learner(learner, version=step)  # every worker starts from the learner's weights
    metrics = MetricsLog(rl_dir, spec.logging.tensorboard, resume_from_step=step if resume else None)
    stop, control = _StopFlag(), ControlWatcher(spec.run_path)

    while step < rl.steps and stop.raised is None:
        step += 1
        if (size := control.pending_scale()) is not None:
            pool.scale(size)                                                   # gream scale RUN --rollout N
        t0 = time.perf_counter()
        sampler.reset()
        filled = filler.fill(sampler.sample)                                   # generate + reward + filter
        if not filled.kept:
            log.warning("no informative group this step; skipping the update", extra=fields(step=step))
            # Keep every metric key on every step (scripts rely on them): null = no update happened.
            trained = dict.fromkeys(LEARNER_KEYS)
            sampler.seconds["train"] = 0.0
        else:
            t_train = time.perf_counter()
            try:
                trained = learner.train_step(train_batch(filled.kept, rl.advantage, rl.passk_k))  # train
            except RayActorError as exc:
                raise LearnerFailed(f"a learner rank died at step {step} ({exc.__class__.__name__}); the job "
                                    f"stopped. Resume from the last checkpoint with: gream launch "
                                    f"{spec.source or 'SPEC'} --resume") from exc
            sampler.seconds["train"] = time.perf_counter() - t_train
        t_push = time.perf_counter()
        push = pool.push(step)                                                 # weights -> rollout workers
        sampler.seconds["push"] = time.perf_counter() - t_push
        record = _step_record(spec, step, sampler, filled, trained, push, time.perf_counter() - t0)
        metrics.write(step, record)                                            # log
        write_status(spec.run_path, step, pool.versions(), pool.restarts)
        log.info("step", extra=fields(**{k: _short(v) for k, v in record.items() if not isinstance(v, list)}))
        if step % spec.checkpoint.every == 0 or step == rl.steps or stop.raised is not None:
            _save(spec, ckpts, learner, source, step)                          # save

    metrics.close()
    rewards.shutdown()
    if stop.raised is None:
        learner.save_hf(rl_dir / "model")
    pool.shutdown()
    learner.shutdown()
    learner_pg.remove()
    if stop.raised is not None:
        raise SystemExit(128 + stop.raised)
    return rl_dir / "model"


def _step_record(spec, step, sampler, filled, trained, push, seconds) -> dict:
    record = rollout_metrics(sampler.all_groups, sampler.source.index.depth)
    record.update({f"dropped/{k}": v for k, v in filled.shares().items()})
    record.update(kept_groups=len(filled.kept), sampled_groups=filled.sampled, sampling_rounds=filled.rounds)
    record.update({k: trained.get(k) for k in LEARNER_KEYS})
    record.update({f"time/{k}": round(v, 4) for k, v in sampler.seconds.items()})
    uids = [g.prompt.uid for g in sampler.all_groups]
    record.update({"data/first_uid": min(uids), "data/last_uid": max(uids)})
    tokens = sum(len(c.token_ids) for g in sampler.all_groups for c in g.rollout.completions)
    record.update({"time/step": round(seconds, 4), "weight_version": step, "push/seconds": push.get("seconds"),
                   "push/bytes": push.get("bytes"),
                   "throughput/rollout_tokens_per_s": tokens / max(sampler.seconds.get("rollout", 0), 1e-9)})
    return record


def _short(v):
    return round(v, 4) if isinstance(v, float) else v


def _save(spec, ckpts: CheckpointManager, learner: LearnerGroup, source: PromptSource, step: int) -> None:
    def write(folder: Path) -> None:
        learner.save_checkpoint(folder / "learner", {"step": step})
        (folder / "driver.json").write_text(json.dumps({"step": step, "weight_version": step,
                                                         "data": source.state()}))

    ckpts.save(step, write, {"weight_version": step, "spec_hash": spec.section_hash("data", "index", "model", "rl")})


def _restore(spec, ckpts: CheckpointManager, learner: LearnerGroup, source: PromptSource) -> int:
    latest = ckpts.latest()
    if latest is None:
        log.warning("--resume: no complete checkpoint yet; starting from the SFT model",
                    extra=fields(folder=str(ckpts.root)))
        return 0
    wanted = spec.section_hash("data", "index", "model", "rl")
    if latest.meta.get("spec_hash") != wanted:
        log.warning("resuming from a checkpoint written under a different spec",
                    extra=fields(checkpoint=latest.meta.get("spec_hash"), spec=wanted))
    learner.load_checkpoint(latest.path / "learner")
    driver = json.loads((latest.path / "driver.json").read_text())
    source.restore(driver["data"])
    log.info("resumed", extra=fields(step=latest.step, path=str(latest.path), cursor=source.cursor))
    return latest.step
