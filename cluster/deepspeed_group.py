"""Joining a DeepSpeed process group (SFT ranks, RL learner ranks), in one place.

On CPU, DeepSpeed's TorchBackend loads a shared-memory collective op in every rank before the rank
joins its group: a g++ JIT build per install path (minutes on a busy 2-core machine), and even when
built, torch's loader takes the build folder's lock (a file) while it checks the build, and every
other rank polls for that file to go, with no timeout. A rank that hangs or dies holding the lock
leaves its peers waiting for good, before any collective timeout applies. The op serves only
DeepSpeed's tensor-parallel inference all-reduce, which gream never calls (its training collectives
are torch.distributed's: gloo on CPU, NCCL on GPUs), so it is switched off before the group starts:
nothing to build or lock, and every wait is the process group's, bounded by its timeout.
"""
from __future__ import annotations

import os
from datetime import timedelta

from cluster.device import Placement
from cluster.ranks import join_group

SHM_OP = "deepspeed_shm_comm"  # DeepSpeed's ShareMemCommBuilder.NAME


def switch_off_shm_op() -> None:
    """Mark DeepSpeed's shared-memory collective op as unavailable in this process. DeepSpeed keeps
    its table of compatible ops as one dict, probed on first read and read again when a backend
    starts, so the entry set here holds for every group started afterwards."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__[SHM_OP] = False


def join_deepspeed_group(placement: Placement, timeout_s: float, own_port: bool) -> None:
    """deepspeed.init_distributed for `placement` (the rank's env set already: cluster.ranks), every
    collective bounded by `timeout_s`. `own_port`: see `join_group`."""
    os.environ.setdefault("DS_ACCELERATOR", placement.ds_accelerator)
    import deepspeed

    if not placement.is_gpu:
        switch_off_shm_op()
    join_group(lambda: deepspeed.init_distributed(dist_backend=placement.dist_backend, verbose=False,
                                                  timeout=timedelta(seconds=timeout_s)), own_port)
