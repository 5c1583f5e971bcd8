"""DeepSpeed's CPU collective op, built by the job's driver before any training rank starts.

On CPU, DeepSpeed's TorchBackend JIT-compiles its shared-memory collective op (g++) in every rank
before the rank joins its group, once per torch extension cache and install path: minutes on a busy
2-core machine. A rank still compiling is silent to a peer already waiting in the store, which times
out; and the compiler's lock file (torch's FileBaton: a file created with O_EXCL, removed when the
build ends) outlives a builder that died holding it, after which every later build waits on it
forever. Built here first, by one process, the ranks of this node only load the op; a lock that no
live process holds is removed before the build.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from cluster.device import resolve
from cluster.logs import fields

SHM_OP = "deepspeed_shm_comm"  # DeepSpeed's ShareMemCommBuilder.NAME: the extension's build folder

log = logging.getLogger(__name__)


def held_open(path: Path, proc: Path = Path("/proc")) -> bool:
    """Whether some process has `path` open, read from /proc/<pid>/fd. True when it cannot tell (no
    /proc, or a process whose descriptors this user may not read), so that a live builder's lock is
    never taken from it."""
    if not proc.is_dir():
        return True
    target, unreadable = str(path.resolve()), False
    for pid in proc.iterdir():
        if not pid.name.isdigit():
            continue
        try:
            descriptors = list((pid / "fd").iterdir())
        except PermissionError:
            unreadable = True
            continue
        except OSError:  # the process ended while being read
            continue
        for fd in descriptors:
            try:
                if os.readlink(fd) == target:
                    return True
            except OSError:
                continue
    return unreadable


def clear_stale_lock(build_dir: Path) -> bool:
    """Remove `build_dir`'s build lock if no process holds it; True if one was removed."""
    lock = build_dir / "lock"
    if not lock.exists() or held_open(lock):
        return False
    lock.unlink(missing_ok=True)
    log.warning("removed a stale extension build lock", extra=fields(path=str(lock)))
    return True


def prebuild_comm_op(device: str) -> None:
    """Build (or load, when built already) DeepSpeed's CPU collective op in this process, clearing a
    stale build lock first. Nothing on a GPU placement, whose collectives are NCCL's. Ranks placed on
    other nodes still build their own on first use."""
    placement = resolve(device)
    if placement.is_gpu:
        return
    os.environ.setdefault("DS_ACCELERATOR", placement.ds_accelerator)
    # torch's own naming of the folder (cache root, python and accelerator tags), as the build uses it.
    from torch.utils.cpp_extension import _get_build_directory

    clear_stale_lock(Path(_get_build_directory(SHM_OP, verbose=False)))
    from deepspeed.comm.torch import build_shm_op

    build_shm_op()
