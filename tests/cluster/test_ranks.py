"""The store port of a training group: drawn where no outgoing connection of the job can take it; ranks
that cannot start end the wait for them."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.ranks import LISTEN_FLOOR, free_port, listen_range, start_rank_actors

REPO = Path(__file__).resolve().parents[2]


def _ephemeral_low() -> int:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        return int(f.read().split()[0])


def test_the_range_lies_between_rays_worker_ports_and_the_ephemeral_ones():
    low, high = listen_range()
    assert low == LISTEN_FLOOR > 19999  # Ray's default max_worker_port
    assert high <= max(_ephemeral_low(), LISTEN_FLOOR + 1024)


def test_a_drawn_port_is_in_the_range_and_free_and_draws_differ():
    low, high = listen_range()
    ports = [free_port() for _ in range(20)]
    assert all(low <= p < high for p in ports)
    assert len(set(ports)) > 10  # random draws, not the kernel's next port for every caller
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[0]))  # free: the store can bind it


def test_a_taken_port_is_not_drawn(monkeypatch):
    import random

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        draws = iter([taken, taken, LISTEN_FLOOR + 7])
        monkeypatch.setattr(random.SystemRandom, "randrange", lambda self, a, b: next(draws))
        assert free_port() == LISTEN_FLOOR + 7


class _Rank:
    def __init__(self, rank: int, world_size: int):
        self.rank = rank

    def rendezvous(self) -> tuple[str, int]:
        return "127.0.0.1", free_port()


def test_ranks_that_cannot_start_are_given_up_after_the_timeout(ray_cluster):
    from ray.exceptions import GetTimeoutError

    start = time.monotonic()
    with pytest.raises(GetTimeoutError, match=r"rank 0 of 2 _Rank ranks did not start within 2s \(10000 CPUs and 0 "
                                              r"GPUs per rank\); the cluster has .* free"):
        start_rank_actors(_Rank, 2, cpus_per_rank=10_000, gpus_per_rank=0, timeout_s=2)
    assert time.monotonic() - start < 30


def test_a_store_port_taken_after_the_draw_is_drawn_again(monkeypatch):
    """The race free_port cannot close: the port is free at the draw and held when the store binds."""
    from torch.distributed import DistNetworkError, TCPStore

    from cluster.ranks import join_group

    stores = []

    def init():
        stores.append(TCPStore("127.0.0.1", int(os.environ["MASTER_PORT"]), 1, True, wait_for_workers=False))

    with socket.socket() as held:
        held.bind(("", 0))
        held.listen()
        taken = held.getsockname()[1]
        monkeypatch.setenv("MASTER_PORT", str(taken))
        with pytest.raises(DistNetworkError, match="EADDRINUSE"):  # the launcher's port: not ours to change
            join_group(init, own_port=False)
        join_group(init, own_port=True)
    assert len(stores) == 1 and int(os.environ["MASTER_PORT"]) != taken


def test_an_sft_process_alone_joins_its_group_past_a_taken_port(tmp_path):
    """sft.engine_setup.init_distributed in a fresh process (DeepSpeed's real rendezvous), its first draw held."""
    script = """
import socket, cluster.ranks as r
from cluster.device import resolve
from sft.engine_setup import init_distributed
held = socket.socket(); held.bind(("", 0)); held.listen()
draws = iter([held.getsockname()[1]])
real = r.free_port
r.free_port = lambda: next(draws, None) or real()
print(init_distributed(resolve("cpu"), 60), held.getsockname()[1], __import__("os").environ["MASTER_PORT"])
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_PORT")})
    assert done.returncode == 0, done.stderr[-3000:]
    group, held, port = done.stdout.strip().splitlines()[-1].rsplit(" ", 2)
    assert group == "(0, 1)" and held != port
