"""`gream rl` / `gream launch` refuse, before any start-up, to mix runs: a fresh run in a run_dir
holding RL checkpoints, and --resume under a changed spec without --force, exit 2 with nothing in
the folder changed."""
import json

import pytest

from cluster.checkpoint import RUN_FILE, CheckpointManager
from cluster.spec import JobSpec, dump_spec
from gream.cli import main


def _job(tmp_path, **rl) -> tuple[JobSpec, str]:
    spec = JobSpec(name="guard", run_dir=str(tmp_path / "run"), stages=["rl"], rl={"steps": 3, **rl})
    path = tmp_path / "job.yaml"
    path.write_text(dump_spec(spec))
    return spec, str(path)


def _checkpoints(spec: JobSpec, spec_hash: str) -> dict[str, bytes]:
    """Two checkpoints of an earlier run; returns every file under the checkpoint folder."""
    mgr = CheckpointManager(spec.layout.checkpoints, keep=5)
    mgr.open_run(resume=False)
    for step in (1, 2):
        mgr.save(step, lambda folder: (folder / "driver.json").write_text(json.dumps({"step": step})),
                 {"weight_version": step, "spec_hash": spec_hash})
    return _files(spec)


def _files(spec: JobSpec) -> dict[str, bytes]:
    root = spec.layout.checkpoints
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("command", ["rl", "launch"])
def test_fresh_run_in_a_run_dir_with_checkpoints_exits_2_and_deletes_nothing(tmp_path, capsys, command):
    from rl_system.train import CHECKPOINT_SECTIONS

    spec, path = _job(tmp_path)
    before = _checkpoints(spec, spec.section_hash(*CHECKPOINT_SECTIONS))
    assert main([command, path]) == 2
    err = capsys.readouterr().err
    assert (f"gream: CheckpointError: {spec.layout.checkpoints} holds checkpoints (step-0000001, step-0000002) "
            "of another run; pass --resume to continue that run, or choose a new run_dir") in err
    assert _files(spec) == before and RUN_FILE in before


def test_resume_under_a_changed_spec_exits_2_unless_forced(tmp_path, capsys):
    from rl_system.train import CHECKPOINT_SECTIONS, _check_spec

    spec, path = _job(tmp_path)
    before = _checkpoints(spec, spec.section_hash(*CHECKPOINT_SECTIONS))
    changed, changed_path = _job(tmp_path, lr=1e-4)
    assert main(["rl", changed_path, "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"gream: SpecChanged: {spec.layout.checkpoints / 'step-0000002'} was written under another spec" in err
    assert "pass --force to continue under this one" in err
    assert _files(spec) == before

    assert main(["rl", changed_path, "--force"]) == 2  # --force only qualifies --resume
    assert "gream: BadRequest: --force lets --resume continue under a changed spec" in capsys.readouterr().err

    # --force proceeds (past this check the run starts Ray, which this test does not pay for).
    latest = CheckpointManager(spec.layout.checkpoints, keep=5).latest()
    _check_spec(changed, latest, force=True)
    assert "WARNING rl_system.train: --force: resuming from a checkpoint written under a different spec" in \
        capsys.readouterr().err  # main() set up gream's console log
    _check_spec(spec, latest, force=False)  # the spec that wrote it: nothing to say
    assert not capsys.readouterr().err
