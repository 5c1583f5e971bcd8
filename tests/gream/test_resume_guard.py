"""`gream sft`, `gream rl` and `gream launch` refuse, before any start-up, to mix runs: a fresh run in a
run_dir holding the stage's checkpoints, and --resume under a changed spec without --force, exit 2
with nothing in the folder changed."""
import json

import pytest

from cluster.checkpoint import RUN_FILE, CheckpointManager, check_spec
from cluster.spec import JobSpec, dump_spec
from gream.cli import main


def _sections(stage: str) -> tuple[str, ...]:
    from rl_system.train import CHECKPOINT_SECTIONS
    from sft.epoch_checkpoints import SECTIONS

    return SECTIONS if stage == "sft" else CHECKPOINT_SECTIONS


def _folder(spec: JobSpec, stage: str):
    return spec.layout.sft_checkpoints if stage == "sft" else spec.layout.checkpoints


def _job(tmp_path, stage: str, **section) -> tuple[JobSpec, str]:
    spec = JobSpec(name="guard", run_dir=str(tmp_path / "run"), stages=[stage], **{stage: section})
    path = tmp_path / "job.yaml"
    path.write_text(dump_spec(spec))
    return spec, str(path)


def _checkpoints(spec: JobSpec, stage: str) -> dict[str, bytes]:
    """Two checkpoints of an earlier run; returns every file under the checkpoint folder."""
    mgr = CheckpointManager(_folder(spec, stage), keep=5)
    mgr.open_run(resume=False)
    for step in (1, 2):
        mgr.save(step, lambda folder: (folder / "driver.json").write_text(json.dumps({"step": step})),
                 {"weight_version": step, "spec_hash": spec.section_hash(*_sections(stage))})
    return _files(spec, stage)


def _files(spec: JobSpec, stage: str) -> dict[str, bytes]:
    root = _folder(spec, stage)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("stage", ["sft", "rl"])
@pytest.mark.parametrize("launched", [False, True])
def test_fresh_run_in_a_run_dir_with_checkpoints_exits_2_and_deletes_nothing(tmp_path, capsys, stage, launched):
    spec, path = _job(tmp_path, stage)
    before = _checkpoints(spec, stage)
    assert main(["launch" if launched else stage, path]) == 2
    err = capsys.readouterr().err
    assert (f"gream: CheckpointError: {_folder(spec, stage)} holds checkpoints (step-0000001, step-0000002) "
            "of another run; pass --resume to continue that run, or choose a new run_dir") in err
    assert _files(spec, stage) == before and RUN_FILE in before


@pytest.mark.parametrize("stage", ["sft", "rl"])
def test_resume_under_a_changed_spec_exits_2_unless_forced(tmp_path, capsys, stage):
    spec, path = _job(tmp_path, stage)
    before = _checkpoints(spec, stage)
    changed, changed_path = _job(tmp_path, stage, lr=1e-4)  # both sections have an lr
    assert main([stage, changed_path, "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"gream: SpecChanged: {_folder(spec, stage) / 'step-0000002'} was written under another spec" in err
    assert "pass --force to continue under this one" in err
    assert _files(spec, stage) == before

    assert main([stage, changed_path, "--force"]) == 2  # --force only qualifies --resume
    assert "gream: BadRequest: --force lets --resume continue under a changed spec" in capsys.readouterr().err

    # --force proceeds (past this check the run starts its workers, which this test does not pay for).
    sections = _sections(stage)
    latest = CheckpointManager(_folder(spec, stage), keep=5).latest()
    check_spec(latest, changed.section_hash(*sections), sections, changed.source, force=True)
    assert "WARNING cluster.checkpoint: --force: resuming from a checkpoint written under a different spec" in \
        capsys.readouterr().err  # main() set up gream's console log
    check_spec(latest, spec.section_hash(*sections), sections, spec.source, force=False)  # the writer's spec
    assert not capsys.readouterr().err
