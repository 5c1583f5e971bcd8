"""One writer per folder: an exclusive flock on a file in it, which the kernel drops when the holding
process ends, however it ends (kill -9 included), so a crash leaves nothing to clean up."""
from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from typing import IO

from cluster.errors import GreamError


def take_lock(path: Path, error: type[GreamError]) -> IO[str]:
    """The lock on `path` (created if missing), or `error` naming the process that holds it."""
    fh = path.open("a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "a process that left no name"
        fh.close()
        raise error(f"{path.parent} is being written by another driver ({holder}); stop it (or wait for it to "
                    "end) first; nothing was changed") from None
    return fh


def name_holder(lock: IO[str]) -> None:
    """Write who holds `lock` into it, for the message of a writer it refuses; called once the holder
    is sure to go on, so that a refused one changes no byte of the folder."""
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    lock.flush()
