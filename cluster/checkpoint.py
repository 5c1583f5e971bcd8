"""Atomic checkpoints: written to a temporary folder, completed by a manifest, then renamed.

A folder without its manifest (a crash mid-write, a truncated copy) is never loaded: `latest()`
skips it with a warning. Only the last `keep` complete checkpoints stay on disk.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cluster.logs import fields

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path
    meta: dict[str, Any]


def _step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:07d}"


class CheckpointManager:
    def __init__(self, root: Path, keep: int):
        self.root = root
        self.keep = keep
        root.mkdir(parents=True, exist_ok=True)

    def save(self, step: int, write: Callable[[Path], None], meta: dict[str, Any]) -> Path:
        final = _step_dir(self.root, step)
        tmp = self.root / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            write(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        manifest = {"step": step, "files": files, **meta}
        with (tmp / MANIFEST).open("w") as fh:
            json.dump(manifest, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        self._prune()
        log.info("checkpoint saved", extra=fields(step=step, path=str(final)))
        return final

    def _complete(self, path: Path) -> dict[str, Any] | None:
        manifest = path / MANIFEST
        if not manifest.exists():
            return None
        try:
            meta = json.loads(manifest.read_text())
        except json.JSONDecodeError:
            return None
        if not all((path / f).exists() for f in meta.get("files", [])):
            return None
        return meta

    def complete(self) -> list[Checkpoint]:
        found = []
        for path in sorted(self.root.glob("step-*")):
            meta = self._complete(path)
            if meta is None:
                log.warning("skipping incomplete checkpoint", extra=fields(path=str(path)))
                continue
            found.append(Checkpoint(int(meta["step"]), path, meta))
        return found

    def latest(self) -> Checkpoint | None:
        done = self.complete()
        return done[-1] if done else None

    def _prune(self) -> None:
        for ckpt in self.complete()[: -self.keep]:
            shutil.rmtree(ckpt.path, ignore_errors=True)
