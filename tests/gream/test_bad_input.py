"""Bad input through the real CLI: exit code 2, a message naming the file, key or value and what was
expected, and nothing already in the run folder lost. The second-signal exit runs the RL driver's
real handler in a child process."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gream.cli import main

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "configs/demo.yaml")
OFFICE = ROOT / "data/office"


def gream(capsys, *argv: str) -> str:
    """Run `gream ARGV`, require exit code 2 and return what it printed to stderr."""
    assert main(list(argv)) == 2
    return capsys.readouterr().err


def test_spec_that_is_not_utf8(tmp_path, capsys):
    spec = tmp_path / "job.yaml"
    spec.write_bytes(b"name: x\ndata:\n  name: Caf\xe9\n")
    err = gream(capsys, "config", "show", str(spec))
    assert f"{spec}: spec is not UTF-8 text: byte 0xe9 at line 3" in err


def test_data_file_that_is_not_utf8(tmp_path, capsys):
    shutil.copy(OFFICE / "Office.inter.json", tmp_path / "X.inter.json")
    (tmp_path / "X.item.json").write_bytes(b'{\n"0": {"title": "Caf\xe9"}}')  # Latin-1
    err = gream(capsys, "data", "stats", DEMO, "--set", f"data.path={tmp_path}", "--set", "data.name=X")
    assert f"{tmp_path / 'X.item.json'}: data file is not UTF-8 text: byte 0xe9 at line 2" in err


def test_set_value_that_is_not_yaml(capsys):
    err = gream(capsys, "config", "show", DEMO, "--set", "rl.steps=[1")
    assert f"{DEMO}: override 'rl.steps=[1': the value is not valid YAML" in err


def test_set_unknown_key(capsys):
    err = gream(capsys, "config", "show", DEMO, "--set", "rl.stepz=5")
    assert f"{DEMO}: unknown key 'rl.stepz' (did you mean 'rl.steps'?)" in err


def test_temporal_ratio_of_zeros(capsys):
    err = gream(capsys, "data", "stats", DEMO, "--set", "data.split=temporal", "--set", "data.temporal_ratio=[0, 0, 0]")
    assert f"{DEMO}: key 'data.temporal_ratio.0': Input should be greater than 0 (got 0)" in err


@pytest.mark.parametrize("where", ["under_a_file", "is_a_file"])
def test_run_dir_that_cannot_be_written(tmp_path, capsys, where):
    occupied = tmp_path / "occupied"
    occupied.write_text("an earlier run's notes\n")
    run_dir = occupied / "run" if where == "under_a_file" else occupied
    err = gream(capsys, "index", DEMO, "--set", f"run_dir={run_dir}")
    assert f"key 'run_dir': cannot write the run folder {run_dir}" in err
    assert "expected a writable folder" in err
    assert occupied.read_text() == "an earlier run's notes\n"


def _index_file_with(tmp_path: Path, item: str, level: int, token: str) -> Path:
    sids = json.loads((OFFICE / "Office.unitok5.index.json").read_text())
    sids[item][level] = token
    path = tmp_path / "Office.edited.index.json"
    path.write_text(json.dumps(sids))
    return path


@pytest.mark.parametrize(("token", "expected"), [
    ("<b_256>", "code 256 of level 'b' ('<b_256>'); expected codes below index.codes=256"),
    # Sized into the SID vocabulary, this one would have asked for 10**17 tokens.
    ("<b_99999999999999999>", "code 99999999999999999 of level 'b'"),
    ("<b_" + "9" * 5000 + ">", "a code of 5000 digits; expected at most 18"),
])
def test_imported_sid_code_above_index_codes(tmp_path, capsys, token, expected):
    index_file = _index_file_with(tmp_path, "17", 1, token)
    run_dir = tmp_path / "run"
    err = gream(capsys, "index", DEMO, "--set", f"run_dir={run_dir}", "--set", f"index.import_file={index_file}",
                "--set", "index.codes=256", "--set", "index.collaborative.weight=0", "--set", "index.collisions=level")
    assert f"{index_file}: key '17': " in err and expected in err
    assert not list((run_dir / "index").glob("*.index.json"))


def test_prompts_per_step_above_the_training_prompts(tmp_path, capsys):
    # Office's lowest user id holds 24 training targets, so a step of 25 prompts would repeat one.
    err = gream(capsys, "rl", DEMO, "--set", f"run_dir={tmp_path}", "--set", "rl.train_users=1",
                "--set", "rl.prompts_per_step=25")
    assert (f"{DEMO}: key 'rl.prompts_per_step': 25 prompts per step, but the 1 users available "
            "(rl.train_users=1) give 24 training prompts; expected at most 24") in err
    assert not (tmp_path / "rl").exists()
    # With the latest target of each user reserved for RL, those are RL's only prompts: one per user.
    err = gream(capsys, "rl", DEMO, "--set", f"run_dir={tmp_path}", "--set", "rl.train_users=3",
                "--set", "sft.reserve_for_rl=1", "--set", "rl.prompts_per_step=4")
    assert ("(rl.train_users=3, sft.reserve_for_rl=1) give 3 training prompts; expected at most 3") in err


# The driver's handler, installed as `gream rl` installs it, in a process busy with a step (a sleep).
GRACEFUL = textwrap.dedent("""
    import time
    from cluster.logs import setup_logging
    from rl_system.train import _StopFlag
    setup_logging("INFO")
    stop = _StopFlag()
    print("ready", flush=True)
    while True:
        time.sleep(0.05)
""")


def _read_until(stream, text: str) -> None:
    seen = ""
    for line in stream:
        seen += line
        if text in line:
            return
    raise AssertionError(f"{text!r} never came; the child wrote: {seen}")


def test_damaged_sft_model_is_named_before_anything_starts(tiny_policy, tmp_path, capsys):
    import ray

    from cluster.spec import dump_spec
    from tests.rl_fixtures import rl_test_spec, stage_inputs

    spec = rl_test_spec(tmp_path / "run")
    stage_inputs(spec, tiny_policy)
    weights = spec.layout.model("sft") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # a copy cut short
    path = tmp_path / "job.yaml"
    path.write_text(dump_spec(spec))
    ray_before = ray.is_initialized()
    err = gream(capsys, "rl", str(path))
    assert f"gream: BadModel: {weights}: cannot be read (" in err and "re-run the sft stage" in err
    assert ray.is_initialized() == ray_before  # refused before Ray or any actor started
    status = json.loads(spec.layout.status.read_text())
    assert status["state"] == "failed" and status["error"] == "BadModel"


def test_second_signal_exits_at_once():
    proc = subprocess.Popen([sys.executable, "-c", GRACEFUL], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _read_until(proc.stdout, "ready")
        proc.send_signal(signal.SIGTERM)
        _read_until(proc.stderr, "checkpointing after this step")
        assert proc.poll() is None  # the first signal waits for the step in flight
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 128 + signal.SIGINT
        assert "second signal: exiting now" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
