"""The toy SID index and token the reward service tests share, and a reward server in a process of its own."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
TOKEN = "s3cret"
# Item 0..3; the last level is a dedup ordinal (items 0 and 1 collide on <a_1><b_2>).
INDEX = {"0": ["<a_1>", "<b_2>", "<c_0>"], "1": ["<a_1>", "<b_2>", "<c_1>"], "2": ["<a_1>", "<b_3>", "<c_0>"],
         "3": ["<a_4>", "<b_2>", "<c_0>"]}
# Scored against target 0: exact, a sibling under the dedup level, one level shared, unparseable.
COMPLETIONS = ["<a_1><b_2><c_0>", "<a_1><b_2><c_1>", "<a_1><b_9><c_0>", "nonsense"]
LCP = [3, 2, 1, 0]
RESIDUAL = [1.0, 0.95, 0.5 ** 0.5, 0.0]

_SERVE = """
import sys
from rl_system.reward.server import RewardServer

server = RewardServer(sys.argv[1], token=sys.argv[2], max_request_bytes=int(sys.argv[3]))
print(server.endpoint(), flush=True)
sys.stdin.read()  # serves until the test closes stdin
server.stop()
"""


@pytest.fixture(scope="module")
def index_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("index") / "Toy.index.json"
    path.write_text(json.dumps(INDEX))
    return path


@contextmanager
def server_process(index_path: Path, max_request_bytes: int) -> Iterator[tuple[subprocess.Popen, str]]:
    """A RewardServer in a child process: (process, endpoint)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _SERVE, str(index_path), TOKEN, str(max_request_bytes)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        endpoint = proc.stdout.readline().strip()
        assert endpoint.startswith("tcp://127.0.0.1:"), f"the reward server did not start (exit {proc.poll()})"
        yield proc, endpoint
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
