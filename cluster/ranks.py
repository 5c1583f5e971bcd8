"""Rendezvous of a DeepSpeed training group (SFT ranks, RL learner ranks), in one place.

A group is W processes that find each other through torch.distributed's env:// store: rank 0's
address and a free port on it, plus each process's rank. Ray actors get these from the driver;
a process started alone becomes a one-rank group of its own.
"""
from __future__ import annotations

import os
import socket


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def rendezvous() -> tuple[str, int]:
    """(this node's address, a free port on it), called on rank 0, which hosts the store."""
    import ray

    return ray.util.get_node_ip_address(), free_port("")


def set_rank_env(rank: int, world_size: int, master_addr: str, master_port: int) -> None:
    """What torch.distributed's env:// init and DeepSpeed read. One rank per actor or process, so
    the local rank is always 0: Ray hands each actor its own device (CUDA_VISIBLE_DEVICES)."""
    os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                      LOCAL_RANK="0", WORLD_SIZE=str(world_size))


def ensure_rank_env() -> tuple[int, int]:
    """(rank, world size) from a launcher's env (Ray actor, torchrun, deepspeed); a process started
    alone joins a fresh one-rank group on a local port."""
    if "RANK" not in os.environ:
        set_rank_env(0, 1, "127.0.0.1", free_port())
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
