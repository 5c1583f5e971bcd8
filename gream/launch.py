"""Run the stages a spec lists, in order, skipping those whose artefacts match the spec.

A stage is done when its folder holds `stage.json` with the hash of the spec sections it depends
on; changing any of those sections (or deleting the folder) makes it run again, and every later
stage with it, because later hashes include the earlier sections.
"""
from __future__ import annotations

import importlib
import json
import logging
import tempfile
import time

from cluster.logs import fields
from cluster.spec import JobSpec, SpecError, dump_spec

log = logging.getLogger(__name__)

# stage -> (module with run(spec), spec sections its artefacts depend on)
STAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "index": ("gream.index_stage", ("data", "index")),
    # Re-run on any sft change, but cheaply: every reply already asked comes from the teacher's cache.
    "teach": ("sft.teach", ("data", "index", "sft")),
    # Its eval.json follows the eval settings it ran under; the model, which teachers read, does not.
    "sasrec": ("sft.sasrec_stage", ("data", "sasrec")),
    "sft": ("sft.stage", ("data", "index", "model", "sft")),
    "rl": ("rl_system.train", ("data", "index", "model", "sft", "rl")),
    "eval": ("rl_system.evaluate", ("data", "index", "model", "sft", "rl", "eval")),
}
RESUMABLE = ("sft", "rl")  # the stages that checkpoint: they take resume and force


def _marker(spec: JobSpec, stage: str):
    return spec.layout.stage_marker(stage)


def stage_hash(spec: JobSpec, stage: str) -> str:
    return spec.section_hash(*STAGES[stage][1])


def is_done(spec: JobSpec, stage: str) -> bool:
    marker = _marker(spec, stage)
    if not marker.exists():
        return False
    try:
        return json.loads(marker.read_text()).get("hash") == stage_hash(spec, stage)
    except json.JSONDecodeError:
        return False


def mark_done(spec: JobSpec, stage: str, seconds: float) -> None:
    marker = _marker(spec, stage)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"stage": stage, "hash": stage_hash(spec, stage), "seconds": round(seconds, 1)}))


def check_run_dir(spec: JobSpec) -> None:
    """Create the run folder and write a file there now: a stage finding out it cannot write only
    when it saves would have spent its whole run first."""
    root = spec.run_path
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as exc:
        raise SpecError(f"{spec.source or 'spec'}: key 'run_dir': cannot write the run folder {root} "
                        f"({exc.strerror}: {exc.filename or root}); expected a writable folder or a path to create one") from exc


def run_stage(spec: JobSpec, stage: str, rerun: bool = False, **options):
    """`rerun`: run it even when its artefacts match the spec; `options` go to the stage's run()."""
    check_run_dir(spec)
    # What `gream serve RUN` reads back: the settings the run's models were trained and evaluated with.
    spec.layout.spec_file.write_text(dump_spec(spec))
    if not rerun and is_done(spec, stage):
        log.info("stage up to date, skipped", extra=fields(stage=stage, folder=str(spec.layout.stage(stage))))
        return None
    module = importlib.import_module(STAGES[stage][0])
    start = time.perf_counter()
    log.info("stage started", extra=fields(stage=stage))
    result = module.run(spec, **options)
    seconds = time.perf_counter() - start
    mark_done(spec, stage, seconds)
    log.info("stage finished", extra=fields(stage=stage, seconds=round(seconds, 1)))
    return result


def launch(spec: JobSpec, **resume_options) -> None:
    """`resume_options` (resume, force) go to the stages that checkpoint."""
    if {"teach", "sft"} & set(spec.stages):
        from sft.teach import preflight

        preflight(spec)
    if "eval" in spec.stages and not spec.trains_teacher(spec.eval.rerank.path):  # refused now, not after training
        from rl_system.evaluate import rerank_teacher

        rerank_teacher(spec)
    for stage in spec.stages:
        run_stage(spec, stage, **(resume_options if stage in RESUMABLE else {}))
