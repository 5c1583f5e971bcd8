"""Rendezvous of a DeepSpeed training group (SFT ranks, RL learner ranks), in one place.

A group is W processes that find each other through torch.distributed's env:// store: rank 0's
address and a free port on it, plus each process's rank. Ray actors get these from the driver;
a process started alone becomes a one-rank group of its own.
"""
from __future__ import annotations

import os
import random
import socket
from pathlib import Path
from typing import Any, Callable

# Ray's workers listen on 10002-19999 by default; a store port is drawn above them.
LISTEN_FLOOR = 20000
STORE_ATTEMPTS = 5
START_TIMEOUT_S = 600.0  # for rank 0 to be placed and answer; a rank imports torch and DeepSpeed first


def listen_range() -> tuple[int, int]:
    """[low, high) of ports no outgoing connection takes: below the kernel's ephemeral range, above Ray's
    worker ports. A port the kernel hands out with bind(0) is ephemeral, and between the check here and
    the store's bind any of the job's many outgoing connections (Ray, vLLM) may take it (EADDRINUSE)."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768  # Linux's default; elsewhere the draw below still checks each port
    return LISTEN_FLOOR, max(ephemeral_low, LISTEN_FLOOR + 1024)


def free_port() -> int:
    """A port free on every address of this machine now (the store listens on all of them), drawn at
    random from `listen_range` so that concurrent jobs on one machine rarely draw the same one; bind(0)
    only when every draw is taken."""
    low, high = listen_range()
    draw = random.SystemRandom()
    for _ in range(64):
        port = draw.randrange(low, high)
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def join_group(init: Callable[[], None], own_port: bool) -> None:
    """Run `init` (the process group's rendezvous). A port this process drew for a group of its own
    can still be taken between the draw and the store's bind (EADDRINUSE): then it draws another, up
    to STORE_ATTEMPTS times. A port the launcher gave every rank is not changed here."""
    from torch.distributed import DistNetworkError

    for attempt in range(STORE_ATTEMPTS):
        try:
            return init()
        except DistNetworkError as exc:
            if not own_port or "EADDRINUSE" not in str(exc) or attempt == STORE_ATTEMPTS - 1:
                raise
            os.environ["MASTER_PORT"] = str(free_port())


def rendezvous() -> tuple[str, int]:
    """(this node's address, a free port on it), called on rank 0, which hosts the store."""
    import ray

    return ray.util.get_node_ip_address(), free_port()


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


def start_rank_actors(actor_cls: type, world_size: int, cpus_per_rank: float, gpus_per_rank: float,
                      role_group=None, args: tuple = (), timeout_s: float = START_TIMEOUT_S,
                      max_concurrency: int = 1) -> tuple[list, str, int]:
    """One Ray actor per rank, `actor_cls(*args, rank, world_size)`, rank r on bundle r of `role_group`
    when one is given; returns the actors and rank 0's rendezvous (`actor_cls` has a `rendezvous`
    method that calls this module's). Ranks whose rank 0 has not answered within `timeout_s` (not
    placed, or stuck starting) are killed and GetTimeoutError raised. `max_concurrency` > 1: a rank
    answers other calls (a health check) while one runs."""
    import ray
    from ray.exceptions import GetTimeoutError

    from cluster.placement import get_started

    remote_cls = ray.remote(actor_cls)
    actors = []
    for rank in range(world_size):
        options: dict[str, Any] = {"num_cpus": cpus_per_rank, "num_gpus": gpus_per_rank,
                                   "max_concurrency": max_concurrency}
        if role_group is not None:
            options["scheduling_strategy"] = role_group.strategy(rank)
        actors.append(remote_cls.options(**options).remote(*args, rank, world_size))
    # Rank 0 may land on any node of a cluster: its own address and port host the store.
    [(master_addr, master_port)] = get_started(actors, [actors[0].rendezvous.remote()], timeout_s, lambda: GetTimeoutError(
        f"rank 0 of {world_size} {actor_cls.__name__} ranks did not start within {timeout_s:.0f}s ({cpus_per_rank} "
        f"CPUs and {gpus_per_rank} GPUs per rank); the cluster has {ray.available_resources()} free"))
    return actors, master_addr, master_port
