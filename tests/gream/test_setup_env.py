"""scripts/setup_env.sh: where the CPU lock's torch comes from, and what it says when it cannot get it.
The script's functions run in real bash against real pip; "unreachable" is a refused local port."""
from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts/setup_env.sh"
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, so pip is refused at once
LOCKED_TORCH = next(line.split("==")[1] for line in (REPO / "requirements/cpu.txt").read_text().splitlines()
                    if line.startswith("torch=="))


def call(command: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f'source "{SCRIPT}" && {command}'], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


def offline_pip(wheels: Path) -> dict[str, str]:
    """pip with no config files, an empty find-links directory and only unreachable indexes."""
    return {"PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": str(wheels), "PIP_INDEX_URL": f"{UNREACHABLE}/simple",
            "PIP_RETRIES": "0", "TORCH_CPU_INDEX": f"{UNREACHABLE}/whl/cpu"}


def test_other_machines_than_x86_64_get_a_message_not_a_resolver_error():
    assert call("cpu_lock_fits x86_64").returncode == 0
    out = call("cpu_lock_fits aarch64")
    assert out.returncode == 1
    assert "requirements/cpu.txt is an x86_64 lock and this machine is aarch64" in out.stderr
    assert "https://download.pytorch.org/whl/cpu" in out.stderr and "no +cpu suffix" in out.stderr


def test_neither_a_local_wheel_nor_the_index_names_both(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    # Into a target folder (pip then ignores what this environment has installed), never this venv.
    out = call(f'install_torch "{sys.executable}" {LOCKED_TORCH}', **offline_pip(wheels), PIP_TARGET=str(tmp_path / "site"))
    assert out.returncode == 1
    assert f"fetching it from {UNREACHABLE}/whl/cpu" in out.stdout  # no local wheel: the index was tried
    assert f"cannot install torch=={LOCKED_TORCH}" in out.stderr
    assert f"PIP_FIND_LINKS={wheels}" in out.stderr and f"the PyTorch CPU index {UNREACHABLE}/whl/cpu" in out.stderr


def test_an_installed_torch_of_the_locked_version_needs_no_network(tmp_path):
    if importlib.metadata.version("torch") != LOCKED_TORCH:
        pytest.skip(f"this environment's torch is {importlib.metadata.version('torch')}, the lock's {LOCKED_TORCH}")
    out = call(f'install_torch "{sys.executable}" {LOCKED_TORCH}', **offline_pip(tmp_path))
    assert out.returncode == 0 and out.stdout == "" and out.stderr == ""
