"""`gream rl SPEC`: the RL driver.

    placement groups -> learner + rollout pool + reward service (started side by side)
    for each step: generate -> reward -> filter -> train -> push weights -> log -> save
    (with rl.max_staleness N > 0 the next batches generate on a thread while this one trains:
    rl_system/rollout_ahead.py)

How it stops: after `rl.steps` (exit 0); on SIGTERM/SIGINT after checkpointing the step in flight
(`Stopped`, exit 128 + N); when a learner rank dies or does not answer within
`cluster.learner.call_timeout_s`, in set-up, restore or the loop (`LearnerFailed`, exit 4). Both
stops name the last complete checkpoint, and the CLI prints the command that resumes from it. A
second SIGTERM/SIGINT exits at once (128 + N), saving nothing more. rl/status.json gets the end:
"finished", "stopped" or "failed" (with the error's type).

Everything else (how a group is sampled, how the learner steps, how weights travel) lives in its
own module; this file is the loop a reader should be able to hold in their head.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from safetensors import SafetensorError, safe_open

from cluster.checkpoint import BestRule, Checkpoint, CheckpointManager, check_spec
from cluster.control import ControlWatcher, write_end, write_status
from cluster.errors import GreamError, MissingArtefact, Resumable, first_line
from cluster.logs import fields
from cluster.metrics_log import MetricsLog
from cluster.placement import init_ray, ranks_group
from cluster.spec import JobSpec, SpecError
from indexing.dataset import load_from_spec, split_from_spec
from indexing.segments import Popularity
from indexing.sid import SidIndex
from rl_system.dynamic_sampling import BatchFiller
from rl_system.groups import GroupSampler, rollout_metrics, train_batch
from rl_system.learner.group import LearnerGroup
from rl_system.prompt_source import PromptSource, training_prompts
from rl_system.reward.pool import RewardPool
from rl_system.reward.teacher import check_teacher
from rl_system.rollout.pool import RolloutPool
from rl_system.rollout_ahead import Produced, RolloutAhead, staleness
from rl_system.validation import KEYS as VALIDATION_KEYS
from rl_system.validation import in_run_validation
from sft.related import related_table

log = logging.getLogger(__name__)


LEARNER_KEYS = ("kl", "entropy", "clip_fraction", "grad_norm", "loss", "pg_loss", "ce")
# The spec sections a checkpoint's state depends on; their hash is in every manifest.
CHECKPOINT_SECTIONS = ("data", "index", "model", "rl")


class BadModel(GreamError):
    """The SFT model RL starts from has a weights file that cannot be read (truncated, corrupt)."""


class LearnerFailed(Resumable):
    """A learner rank died: a DeepSpeed group cannot go on without one of its ranks."""

    exit_code = 4


class Stopped(Resumable):
    """SIGTERM/SIGINT: the step in flight was checkpointed. Exit code 128 + N, what a shell reports
    for a process ended by signal N, so schedulers and scripts see a termination, not a success."""

    def __init__(self, signum: int, hint: str):
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name}; {hint}")


class _StopFlag:
    """SIGTERM/SIGINT ask the loop to checkpoint after the step in flight and stop; a second one
    ends the process at once (exit 128 + N), for the operator who cannot wait for that step."""

    def __init__(self):
        self.raised: int | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._set)

    def _set(self, signum, _frame) -> None:
        if self.raised is not None:
            # No unwinding: the teardown it would run can wait on a hung actor, the very thing a second
            # signal is sent to escape. Checkpoints are renamed into place whole, so none is half written.
            log.error("second signal: exiting now; the last complete checkpoint is the one to resume from",
                      extra=fields(signal=signum))
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + signum)
        self.raised = signum  # before logging: a second signal can land while this handler still runs
        log.warning("signal received: checkpointing after this step (send it again to exit now)",
                    extra=fields(signal=signum))


class _ScoreWindow:
    """What a checkpoint is ranked by: `checkpoint.best_metric` averaged over the steps since the
    previous checkpoint. A mean, not the last step's value, because one step's reward comes from a
    handful of prompts and is noisy. Steps where the metric is null (no update) are left out."""

    def __init__(self, spec: JobSpec):
        self.metric, self.source = spec.checkpoint.best_metric, spec.source or "spec"
        self.values: list[float] = []

    def add(self, record: dict) -> None:
        if self.metric not in record:
            keys = sorted(k for k, v in record.items() if not isinstance(v, list))
            raise SpecError(f"{self.source}: key 'checkpoint.best_metric': {self.metric!r} is not a per-step RL "
                            f"metric; expected one of: {', '.join(keys)}")
        value = record[self.metric]
        if isinstance(value, (int, float)) and math.isfinite(value):
            self.values.append(float(value))

    def take(self) -> dict[str, float]:
        """{metric: mean} for the checkpoint manifest ({} when no step had a value); starts a new window."""
        values, self.values = self.values, []
        return {self.metric: sum(values) / len(values)} if values else {}


def _resume_hint(ckpts: CheckpointManager) -> str:
    latest = ckpts.latest()
    if latest is None:
        return "no checkpoint was complete yet, so --resume starts over from the SFT model"
    return f"the last complete checkpoint is step {latest.step} ({latest.path}); --resume continues from it"


@contextmanager
def _stop_on_learner_death(learner: LearnerGroup | None, ckpts: CheckpointManager):
    """A dead or silent learner rank ends the job as LearnerFailed; any other actor's death passes
    through (the rollout and reward pools replace their own actors before it could reach here).
    `learner` None: its set-up, where every actor is a learner rank. A timeout is the learner's:
    the pools time out and replace their own actors."""
    try:
        yield
    except GetTimeoutError as exc:
        raise LearnerFailed(f"the learner did not answer ({first_line(exc)}; cluster.learner.call_timeout_s); "
                            f"the job stopped; {_resume_hint(ckpts)}") from exc
    except RayActorError as exc:
        rank = None if learner is None else learner.rank_of(exc)
        if learner is not None and rank is None:
            raise
        who = "a learner rank died during set-up" if learner is None else f"learner rank {rank} died"
        raise LearnerFailed(f"{who} ({type(exc).__name__}: {first_line(exc)}); the job stopped; "
                            f"{_resume_hint(ckpts)}") from exc


@contextmanager
def _status_at_end(run_dir: Path):
    """rl/status.json's last word, so `gream status` tells an ended job from a driver that died
    without one (which it can only infer from the file going stale)."""
    try:
        yield
    except Stopped:
        write_end(run_dir, "stopped")
        raise
    except BaseException as exc:
        write_end(run_dir, "failed", type(exc).__name__)
        raise
    write_end(run_dir, "finished")


def sft_model_dir(spec: JobSpec) -> Path:
    model = spec.layout.model("sft")
    weights = sorted(model.glob("*.safetensors"))
    if not (model / "config.json").exists() or not weights:
        raise MissingArtefact(f"{model}: no SFT model (config.json and *.safetensors) to start RL from; "
                              "run the sft stage first")
    # Read here, headers only, so a damaged file is named as bad input before any actor starts: in the
    # learner it would surface as a remote traceback.
    for path in weights:
        try:
            with safe_open(path, "pt"):
                pass
        except SafetensorError as exc:
            raise BadModel(f"{path}: cannot be read ({exc}); re-run the sft stage or restore the file") from exc
    return model


def run(spec: JobSpec, resume: bool = False, force: bool = False) -> Path:
    """`force`: resume although the spec's checkpoint sections changed since the checkpoint."""
    ds = load_from_spec(spec)
    split = split_from_spec(spec, ds)
    prompts = training_prompts(spec, split.train)  # a bad spec fails here, before Ray or the models start
    if spec.rl.teacher is not None:
        check_teacher(spec.rl.teacher.path, ds.num_items, spec.data.name)
    # Before any start-up, so that a refused run costs nothing and changes nothing.
    ckpts = CheckpointManager(spec.layout.checkpoints, spec.checkpoint.keep,
                              BestRule(spec.checkpoint.best_metric, spec.checkpoint.best_mode))
    spec_hash = spec.section_hash(*CHECKPOINT_SECTIONS)
    ckpts.open_run(resume, lambda latest: check_spec(latest, spec_hash, CHECKPOINT_SECTIONS, spec.source, force))
    try:  # the writer lock goes with the run, also where a caller (a test) keeps its traceback
        with _status_at_end(spec.run_path):
            return _train(spec, ckpts, prompts, split, resume)
    finally:
        ckpts.close()


def _train(spec: JobSpec, ckpts: CheckpointManager, prompts, split, resume: bool) -> Path:
    from transformers import AutoTokenizer

    from indexing.build import index_path

    rl, rl_dir = spec.rl, spec.layout.stage("rl")
    start_model, idx_path = sft_model_dir(spec), index_path(spec)
    init_ray(spec.cluster)
    index = SidIndex.load(idx_path)
    if problem := rl.objectives.level_problem(index.depth):
        raise SpecError(f"{spec.source or 'spec'}: {problem}")
    tokenizer = AutoTokenizer.from_pretrained(start_model)

    learner_pg = ranks_group(spec.name, "learner", spec.cluster.learner)
    popularity = Popularity.from_train(split.train, max(index.items()) + 1)
    # Side by side: each role's start-up is its own processes importing and building (DeepSpeed, the
    # vLLM engine, the replicas), so none waits for another's.
    with ThreadPoolExecutor(3, thread_name_prefix="start") as starting:
        learner = starting.submit(LearnerGroup.from_spec, spec, start_model, learner_pg)
        pool = starting.submit(RolloutPool.from_spec, spec, start_model, index)
        rewards = starting.submit(RewardPool.from_spec, spec, idx_path, popularity)
        with _stop_on_learner_death(None, ckpts):
            learner = learner.result()
        pool, rewards = pool.result(), rewards.result()
    related = related_table(spec)
    source = PromptSource(prompts, index, tokenizer, rl.seed, rl.mode == "reasoning", related)
    validate = in_run_validation(spec, learner, pool, tokenizer, index, split, related, start_model)
    sampler = GroupSampler(rl, pool, rewards, source, tokenizer.get_vocab().get("<answer>"))
    filler = BatchFiller(rl.prompts_per_step, rl.max_resample_rounds, rl.drop_flat_groups)
    anchor_end = tokenizer.eos_token_id if rl.ce_coef else None  # each group's target row for the CE anchor

    def produce() -> Produced:
        sampler.reset()
        filled = filler.fill(sampler.sample)                               # generate + reward + filter
        return Produced(filled, sampler.all_groups, dict(sampler.seconds), source.state(), source.epochs_drawn)

    with ExitStack() as teardown, _stop_on_learner_death(learner, ckpts):
        # However the loop ends (done, signalled, a rank lost), the actors go; last in, first out.
        for close in (learner_pg.remove, learner.shutdown, pool.shutdown, rewards.shutdown):
            teardown.callback(close)
        step = _restore(ckpts, learner, source) if resume else 0
        pool.attach_learner(learner, version=step)  # every worker starts from the learner's weights
        trained_data, drawn = source.state(), source.epochs_drawn  # what the trained batches used up
        metrics = MetricsLog(rl_dir, spec.logging.tensorboard, resume_from_step=step,
                             wandb_project=spec.logging.wandb_project)
        teardown.callback(metrics.close)
        stop, control, window = _StopFlag(), ControlWatcher(spec.run_path), _ScoreWindow(spec)
        if validate is not None and step == 0:  # the SFT model: the baseline every checkpoint must beat
            t_val = time.perf_counter()
            baseline = validate()
            metrics.write(0, {**baseline, "time/validate": round(time.perf_counter() - t_val, 4)})
            _save(spec, ckpts, learner, trained_data, 0, {spec.checkpoint.best_metric: baseline.get(spec.checkpoint.best_metric)})
        ahead = RolloutAhead(produce, rl.max_staleness, version=step)
        teardown.callback(ahead.close)  # registered last, so it ends before the pools it uses
        stopping = False
        while step < rl.steps and not stopping and not _trained_enough(rl, drawn):
            step += 1
            if (size := control.pending_scale()) is not None:
                pool.scale(size)                                           # gream scale RUN --rollout N
            t0 = time.perf_counter()
            batch = ahead.take()                                           # generated, rewarded, filtered
            if not batch.filled.kept:
                log.warning("no informative group this step; skipping the update", extra=fields(step=step))
                # Keep every metric key on every step (scripts rely on them): null = no update happened.
                trained = dict.fromkeys(LEARNER_KEYS)
                batch.seconds["train"] = 0.0
            else:
                t_train = time.perf_counter()
                rows = train_batch(batch.filled.kept, rl.advantage, rl.passk_k, anchor_end)
                trained = learner.train_step(rows)                                 # train
                batch.seconds["train"] = time.perf_counter() - t_train
            trained_data, drawn = batch.data_state, batch.epochs_drawn
            last = step == rl.steps or _trained_enough(rl, drawn)
            t_push = time.perf_counter()
            if not last:
                ahead.before_push(step)
            push = pool.push(step)                                         # weights -> rollout workers
            ahead.pushed(step)
            batch.seconds["push"] = time.perf_counter() - t_push
            record = _step_record(step, index.depth, batch, trained, push, time.perf_counter() - t0)
            evaluated = validate is not None and (step % rl.eval_every == 0 or last)
            if validate is not None:
                t_val = time.perf_counter()
                record.update(validate() if evaluated else dict.fromkeys(VALIDATION_KEYS))  # validate
                record["time/validate"] = round(time.perf_counter() - t_val, 4) if evaluated else None
            metrics.write(step, record)                                    # log
            window.add(record)
            write_status(spec.run_path, step, pool.versions(), pool.restarts)
            log.info("step", extra=fields(**{k: _short(v) for k, v in record.items() if not isinstance(v, list)}))
            # Read the flag once: a signal landing after this line stops the loop a step later, so
            # the step it stops after is always one that was saved.
            stopping = stop.raised is not None
            if step % spec.checkpoint.every == 0 or last or stopping or evaluated:
                _save(spec, ckpts, learner, trained_data, step, window.take())  # save
        if not stopping:
            _export_selected(spec, ckpts, learner, step, selected=exports_best(spec, validate is not None))
    if stopping:
        raise Stopped(stop.raised, _resume_hint(ckpts))
    return spec.layout.model("rl")


def _trained_enough(rl, epochs_drawn: float) -> bool:
    return rl.epochs is not None and epochs_drawn >= rl.epochs


def exports_best(spec: JobSpec, validated: bool) -> bool:
    """Whether rl/model is the best checkpoint (else the last weights): only a run validated in-run
    ranks its checkpoints by accuracy, and `checkpoint.select: last` opts out of that."""
    return validated and spec.checkpoint.select == "best"


def _export_selected(spec: JobSpec, ckpts: CheckpointManager, learner: LearnerGroup, step: int,
                     selected: bool) -> None:
    """rl/model: with in-run validation and `checkpoint.select: best`, the best checkpoint by
    `checkpoint.best_metric` (step 0 = the SFT weights, when no step beat them), as SFT and SASRec
    are early-stopped; else the last weights. `selection.json` beside it says which."""
    best = ckpts.best() if selected else None
    if best is not None and best.step != step:
        learner.load_checkpoint(best.path / "learner")
    out = spec.layout.model("rl")
    learner.save_hf(out)
    choice = {"step": best.step if best else step, "last_step": step,
              "metric": spec.checkpoint.best_metric if best else None,
              "value": ckpts.rule.score(best) if best else None}
    spec.layout.selection.write_text(json.dumps(choice, indent=1))
    log.info("rl model saved", extra=fields(path=str(out), **choice))


def _step_record(step: int, depth: int, batch: Produced, trained, push, seconds) -> dict:
    filled, groups = batch.filled, batch.groups
    record = rollout_metrics(groups, depth)
    record.update({f"dropped/{k}": v for k, v in filled.shares().items()})
    record.update(kept_groups=len(filled.kept), informative_groups=filled.informative, sampled_groups=filled.sampled,
                  sampling_rounds=filled.rounds)
    record.update({k: trained.get(k) for k in LEARNER_KEYS})
    record.update({f"time/{k}": round(v, 4) for k, v in batch.seconds.items()})
    uids = [g.prompt.uid for g in groups]
    record.update({"data/first_uid": min(uids), "data/last_uid": max(uids), "data/epochs": round(batch.epochs_drawn, 4)})
    lag = staleness(filled.kept, step - 1)  # the rows trained, against the learner's weights before this step
    record.update({"staleness/mean": float(lag.mean()) if lag.size else None,
                   "staleness/max": int(lag.max()) if lag.size else None})
    tokens = sum(len(c.token_ids) for g in groups for c in g.rollout.completions)
    record.update({"time/step": round(seconds, 4), "weight_version": step, "push/seconds": push.get("seconds"),
                   "push/bytes": push.get("bytes"),
                   "throughput/rollout_tokens_per_s": tokens / max(batch.seconds.get("rollout", 0), 1e-9)})
    return record


def _short(v):
    return round(v, 4) if isinstance(v, float) else v


def _save(spec: JobSpec, ckpts: CheckpointManager, learner: LearnerGroup, data_state: dict, step: int,
          score: dict[str, float]) -> None:
    """`data_state`: the prompt cursor after the last trained batch (batches generated ahead are
    generated again on resume)."""
    def write(folder: Path) -> None:
        learner.save_checkpoint(folder / "learner", {"step": step})
        (folder / "driver.json").write_text(json.dumps({"step": step, "weight_version": step, "data": data_state}))

    ckpts.save(step, write, {"weight_version": step, "spec_hash": spec.section_hash(*CHECKPOINT_SECTIONS),
                             "metrics": score})


def _restore(ckpts: CheckpointManager, learner: LearnerGroup, source: PromptSource) -> int:
    def load(ckpt: Checkpoint) -> None:
        data = json.loads((ckpt.path / "driver.json").read_text())["data"]  # before the learner: it may fail
        learner.load_checkpoint(ckpt.path / "learner")
        source.restore(data)

    # RayTaskError: the learner raised while loading (a corrupt shard). A dead rank is a
    # RayActorError instead, and ends the job as LearnerFailed rather than trying older checkpoints.
    loaded = ckpts.load_latest(load, (RayTaskError, OSError, ValueError, KeyError))
    if loaded is None:
        log.warning("--resume: no checkpoint yet; starting from the SFT model", extra=fields(folder=str(ckpts.root)))
        return 0
    ckpt = loaded[0]
    log.info("resumed", extra=fields(step=ckpt.step, path=str(ckpt.path), cursor=source.cursor))
    return ckpt.step
