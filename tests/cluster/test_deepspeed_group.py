"""A DeepSpeed group on CPU (cluster/deepspeed_group.py): a peer that hangs costs the live rank its
collective timeout, not a wait without end on DeepSpeed's shared-memory op: the op's build lock, held
by a peer that hangs (or died) while it checked the build, or its set-up."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from cluster.deepspeed_group import SHM_OP
from cluster.ranks import free_port

REPO = Path(__file__).resolve().parents[2]

LIVE = """
import torch, torch.distributed as dist
from cluster.device import resolve
from cluster.deepspeed_group import join_deepspeed_group
join_deepspeed_group(resolve("cpu"), 10, own_port=False)
from deepspeed.comm import comm
print("shm op:", comm.cdb.shm_comm_op, flush=True)
dist.all_reduce(torch.ones(1))
"""
# Joins the process group as torch does, then hangs: never sets up DeepSpeed's shared memory, never reduces.
HUNG = """
import time, torch.distributed as dist
dist.init_process_group("gloo")
print("joined", flush=True)
time.sleep(600)
"""


def _rank(script: str, rank: int, port: int, extensions: Path) -> subprocess.Popen:
    env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": str(extensions)}
    return subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_a_peer_hung_after_the_group_forms_costs_the_collective_timeout(tmp_path):
    # The lock a peer left in the op's build folder: torch's loader waits for it to go, with no timeout.
    (tmp_path / SHM_OP).mkdir()
    (tmp_path / SHM_OP / "lock").touch()
    port = free_port()
    live, hung = _rank(LIVE, 0, port, tmp_path), _rank(HUNG, 1, port, tmp_path)
    try:
        start = time.monotonic()
        out, err = live.communicate(timeout=240)
        elapsed = time.monotonic() - start
    finally:
        for proc in (live, hung):
            proc.kill()
            proc.wait()
    # The live rank got past the group's set-up without the op, then its reduce timed out and raised.
    assert "shm op: None" in out, err[-3000:]
    assert live.returncode != 0 and "timed out" in err.lower(), err[-3000:]
    assert elapsed < 180
