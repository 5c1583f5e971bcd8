"""Atomic checkpoints: written to a temporary folder, completed by a manifest, then renamed.

A folder without its manifest (a crash mid-write, a truncated copy) is never loaded: `latest()`
skips it with a warning. The last `keep` complete checkpoints stay on disk, and so does the best
one: with a `BestRule`, every save ranks the complete checkpoints by the metric value their
manifests record (`meta["metrics"][rule.metric]`) and names the winner in `best.json`, which
`best()` (and `gream export RUN --step best`) reads.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from cluster.logs import fields

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
BEST_FILE = "best.json"


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path
    meta: dict[str, Any]


@dataclass(frozen=True)
class BestRule:
    """The best checkpoint is the one whose manifest records the highest (max) or lowest (min)
    value of `metric`; a checkpoint without a finite value for it is not a candidate."""

    metric: str
    mode: Literal["max", "min"] = "max"

    def score(self, ckpt: Checkpoint) -> float | None:
        value = ckpt.meta.get("metrics", {}).get(self.metric)
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    def pick(self, ckpts: list[Checkpoint]) -> Checkpoint | None:
        sign = 1.0 if self.mode == "max" else -1.0
        scored = [(sign * s, c.step, c) for c in ckpts if (s := self.score(c)) is not None]
        # On a tie the later step wins: the same score after more training.
        return max(scored, key=lambda t: t[:2])[2] if scored else None


def _step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:07d}"


class CheckpointManager:
    """Writes, finds and prunes checkpoints under `root`. Without a `best` rule (readers such as
    `gream status` and `gream export`) it never names a best one, but `best()` still reads the
    writer's `best.json`."""

    def __init__(self, root: Path, keep: int, best: BestRule | None = None):
        self.root = root
        self.keep = keep
        self.rule = best
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
        done = self.complete()
        best = self._record_best(done)
        self._prune(done, best)
        log.info("checkpoint saved", extra=fields(step=step, path=str(final),
                                                  best=best.step if best is not None else None))
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

    def best(self) -> Checkpoint | None:
        """The checkpoint `best.json` names, while it is complete; None before the first scored save."""
        try:
            step = int(json.loads((self.root / BEST_FILE).read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        path = _step_dir(self.root, step)
        meta = self._complete(path)
        return Checkpoint(step, path, meta) if meta is not None else None

    def _record_best(self, done: list[Checkpoint]) -> Checkpoint | None:
        if self.rule is None:
            return None
        best = self.rule.pick(done)
        if best is None:  # nothing scored (yet) under this rule: no stale pointer from an earlier rule
            (self.root / BEST_FILE).unlink(missing_ok=True)
            return None
        record = {"step": best.step, "path": best.path.name, "metric": self.rule.metric, "mode": self.rule.mode,
                  "value": self.rule.score(best)}
        tmp = self.root / f".{BEST_FILE}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(self.root / BEST_FILE)  # atomic: a reader sees the old or the new best, never half
        return best

    def _prune(self, done: list[Checkpoint], best: Checkpoint | None) -> None:
        for ckpt in done[: -self.keep]:
            if best is None or ckpt.step != best.step:
                shutil.rmtree(ckpt.path, ignore_errors=True)
