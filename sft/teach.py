"""`gream teach SPEC`: the teacher's data that SFT reads, between the index and SFT stages.

Two kinds, each only when the spec uses it: the 5-stage reasoning records (`sft.reasoning.enabled`,
sft/reasoning_data.py) and the per-user preference summaries (the `preference` task in `sft.tasks`,
sft/preference_data.py). One teacher writes both (`sft.reasoning.teacher`): the model an
OpenAI-compatible `sft.reasoning.endpoint` serves, a Hugging Face folder on a local vLLM engine, or
`smollm2`, SmolLM2-135M-Instruct imported once from its offline package into the model cache. Every
reply is cached as it comes (`teach/<kind>/teacher_cache.jsonl`), so an interrupted run resumes and
a re-run asks nothing; `teach/<kind>/report.json` counts what was asked, taken from the cache, kept,
and dropped by reason.

SFT does not ask the teacher itself: a teacher and the trainer would hold one accelerator's memory
at once, and a failing endpoint would fail SFT. It reads the files and exits 2, naming them and this
command, when they are missing or were written under other settings.
"""
from __future__ import annotations

import logging
from pathlib import Path

from cluster.errors import MissingArtefact
from cluster.logs import fields
from cluster.spec import JobSpec
from cluster.teach_spec import OFFLINE_TEACHER
from indexing.dataset import Dataset, load_from_spec, reserve_latest, split_from_spec
from indexing.rewrite import Teacher, make_teacher
from indexing.sid import SidIndex
from sft.distill import check_distill
from sft.preference_data import generate_preferences, read_summaries, select_users
from sft.reasoning_data import generate_reasoning, read_records, select_examples
from sft.tasks import ReasoningRecord, TaskError, item_text_problem, title_of

log = logging.getLogger(__name__)


def kinds(spec: JobSpec) -> list[str]:
    """The teacher data this spec's SFT reads."""
    return [k for k, used in (("reasoning", spec.sft.reasoning.enabled), ("preference", "preference" in spec.sft.tasks))
            if used]


def require_item_text(spec: JobSpec, ds: Dataset) -> None:
    """TaskError (exit 2) when sft.tasks or sft.reasoning need item titles that the data lacks."""
    item_file = Path(ds.folder) / f"{ds.name}.item.json"
    has_titles = any(title_of(ds.items, i) for i in ds.items)
    missing = f"{item_file} is not there" if not item_file.exists() else f"no item in {item_file} has a 'title'"
    if problem := item_text_problem(spec.sft.tasks, spec.sft.reasoning.enabled, has_titles, missing):
        raise TaskError(f"{spec.source or 'spec'}: {problem}")


def preflight(spec: JobSpec) -> None:
    """The data checks of the teach and SFT stages, for `gream launch` to run before any stage: a
    recipe that cannot train should not first spend the index stage."""
    if kinds(spec) or any(t != "seqrec" for t in spec.sft.tasks):
        require_item_text(spec, load_from_spec(spec))
    if spec.sft.distill.path is not None and not spec.trains_teacher(spec.sft.distill.path):
        check_distill(spec, load_from_spec(spec).num_items)


def spec_teacher(spec: JobSpec) -> Teacher:
    rs = spec.sft.reasoning
    model = rs.teacher
    if model == OFFLINE_TEACHER and not rs.endpoint:
        from sft.import_smollm2 import cached_smollm2

        model = str(cached_smollm2())
    return make_teacher(spec, rs.endpoint, model, rs.max_tokens, "sft.reasoning", "teacher")


def _index(spec: JobSpec) -> SidIndex:
    from indexing.build import index_path

    path = index_path(spec)
    if not path.exists():
        raise MissingArtefact(f"{path}: no SID index; run the index stage first (gream index SPEC)")
    return SidIndex.load(path)


def run(spec: JobSpec, batch_size: int = 32) -> dict[str, dict]:
    """Write the teacher data the spec needs; returns each kind's report."""
    wanted = kinds(spec)
    if not wanted:
        log.info("no teacher data to write: sft.reasoning.enabled is false and sft.tasks has no 'preference'")
        return {}
    ds = load_from_spec(spec)
    require_item_text(spec, ds)
    index = _index(spec)
    train, _ = reserve_latest(split_from_spec(spec, ds).train, spec.sft.reserve_for_rl)
    teacher = spec_teacher(spec)
    reports = {}
    try:  # one teacher (one engine start) for both kinds, each with its own reply budget
        if "reasoning" in wanted:
            rs = spec.sft.reasoning
            teacher.max_tokens = rs.max_tokens
            examples = select_examples(train, rs.max_examples, spec.sft.seed)
            reports["reasoning"] = generate_reasoning(spec, examples, index, ds.items, teacher, batch_size)
        if "preference" in wanted:
            ps = spec.sft.preference
            teacher.max_tokens = ps.max_tokens
            users = select_users(train, ps.max_users, spec.sft.seed)
            reports["preference"] = generate_preferences(spec, users, index, ds.items, teacher, batch_size)
    finally:
        teacher.close()
    log.info("teach done", extra=fields(**{f"{k}_{n}": r[n] for k, r in reports.items() for n in ("asked", "kept", "dropped")}))
    return reports


def read_for_sft(spec: JobSpec) -> tuple[list[ReasoningRecord], dict[int, str] | None]:
    """The reasoning records and preference summaries the spec's SFT trains on, as `run` wrote them
    ([] and None where the spec uses none)."""
    wanted = kinds(spec)
    return (read_records(spec) if "reasoning" in wanted else [],
            read_summaries(spec) if "preference" in wanted else None)
