"""The dedicated torch.distributed group of a weight push: sender rank 0, one rank per vLLM worker."""
from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

from rl_system.weight_sync.plan import WeightSyncError

# A join, and every broadcast, not done this long raises on every member that waits for it.
GROUP_TIMEOUT_S = 600.0
_STORE_PREFIX = "gream-weights"


# --------------------------------------------------------------------------- group
def join_group(master_addr: str, port: int, rank: int, world_size: int, backend: str,
               timeout_s: float = GROUP_TIMEOUT_S):
    """A process group of its own (not the default group, which DeepSpeed or vLLM already own).
    Blocks until all `world_size` ranks have joined."""
    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(master_addr, port, world_size, is_master=rank == 0, timeout=timeout,
                          wait_for_workers=False)
    store = dist.PrefixStore(_STORE_PREFIX, store)
    if backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, world_size, timeout)
    if backend == "nccl":
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, world_size, options)
    raise WeightSyncError(f"unsupported weight-sync backend '{backend}'; expected 'gloo' or 'nccl'")


def broadcast_async(group, tensor: torch.Tensor):
    """Start a broadcast from rank 0 and return its work handle (`.wait()` to finish)."""
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    return group.broadcast([tensor], opts)
