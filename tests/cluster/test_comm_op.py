"""DeepSpeed's CPU collective op built by the driver (cluster/comm_op.py): a build lock whose holder
died is removed, a live holder's is kept, and the build then goes through."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.comm_op import SHM_OP, clear_stale_lock, held_open

REPO = Path(__file__).resolve().parents[2]


def _holder(path: Path) -> subprocess.Popen:
    """A live process holding `path` open, as a builder holds its lock."""
    proc = subprocess.Popen([sys.executable, "-c", f"import time; f = open({str(path)!r}); print('open', flush=True); "
                             "time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "open"
    return proc


def test_a_lock_is_held_while_its_holder_lives_and_stale_after(tmp_path):
    lock = tmp_path / "lock"
    lock.touch()
    holder = _holder(lock)
    try:
        assert held_open(lock)
        assert not clear_stale_lock(tmp_path) and lock.exists()
    finally:
        holder.kill()
        holder.wait()
    assert not held_open(lock)
    assert clear_stale_lock(tmp_path) and not lock.exists()
    assert not clear_stale_lock(tmp_path)  # nothing left to remove


def test_without_proc_a_lock_counts_as_held(tmp_path):
    lock = tmp_path / "lock"
    lock.touch()
    assert held_open(lock, proc=tmp_path / "no_proc")


def test_the_driver_builds_the_op_past_a_stale_lock(tmp_path):
    """The op's build folder copied into a fresh extension cache (the build already done, as the
    suite's SFT runs leave it; built from scratch otherwise), with the lock of a builder that died:
    the build returns instead of waiting on the lock forever."""
    from torch.utils.cpp_extension import _get_build_directory

    built = Path(_get_build_directory(SHM_OP, verbose=False))
    cache = tmp_path / "extensions"
    if (built / f"{SHM_OP}.so").exists():
        shutil.copytree(built, cache / SHM_OP, ignore=shutil.ignore_patterns("lock"))
    (cache / SHM_OP).mkdir(parents=True, exist_ok=True)
    (cache / SHM_OP / "lock").touch()
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(cache), "PYTHONPATH": str(REPO)}
    start = time.monotonic()
    try:
        subprocess.run([sys.executable, "-c", "from cluster.comm_op import prebuild_comm_op; prebuild_comm_op('cpu')"],
                       env=env, cwd=REPO, check=True, timeout=600, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the build still waited on the stale lock after {time.monotonic() - start:.0f} s")
    assert (cache / SHM_OP / f"{SHM_OP}.so").exists() and not (cache / SHM_OP / "lock").exists()
