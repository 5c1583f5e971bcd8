"""Checkpoints that cannot betray a run: atomic, verified, and fenced to the run that wrote them.

Atomic: a checkpoint is written to a temporary folder; every file is fsynced and its size and
sha256 go into the manifest; the folder is fsynced, renamed to `step-NNNNNNN` and its parent
fsynced, so after a crash a step folder is whole or absent. `.tmp-*` left by a crash are removed
when the next writer opens the run.

Verified: a folder is complete when its manifest is readable and every file has the size it
records (a stat per file, cheap enough for the dashboard's poll; a truncated shard fails it).
Loading (`load_latest`) also checks the hashes and falls back to the checkpoint before one that
fails them or fails to load.

Fenced: a writer opens a run first. A fresh run takes a new run id, kept in `run.json` beside the
checkpoints, and refuses a folder that already holds checkpoints, since they are another run's; a
resumed run keeps its id. Every manifest records its run id, and a writer loads, ranks and prunes
only its own run's checkpoints, so keep-last-k never trades one of them for an older run's.
One writer at a time: opening takes `writer.lock` (flock, held until the writer closes or its
process ends, kill -9 included), so `--resume` while the old driver lives is refused. Where a file
system does not share flock between machines, the writer number in `run.json` (one more at each
open) still fences: a writer checks it is still the latest before it renames and before it prunes,
and stops (CheckpointError) when a later one has opened the run.

A manifest is input like any file in the folder: one of the wrong shape, or naming a file outside
the folder (absolute, or through `..`), makes its checkpoint incomplete, as a torn one is.

The last `keep` complete checkpoints stay on disk, and so does the best one: with a `BestRule`,
every save ranks the complete checkpoints by the metric value their manifests record
(`meta["metrics"][rule.metric]`) and names the winner in `best.json`, which `best()` (and `gream
export RUN --step best`) reads.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Callable, Literal, TypeVar

from cluster.errors import GreamError, first_line
from cluster.logs import fields
from cluster.writer_lock import name_holder, take_lock

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
BEST_FILE = "best.json"
RUN_FILE = "run.json"
LOCK_FILE = "writer.lock"
TMP_PREFIX = ".tmp-"
T = TypeVar("T")


class CheckpointError(GreamError):
    """A checkpoint folder that cannot serve the run as asked: another run's, or none loadable."""


class SpecChanged(GreamError):
    """--resume under a spec whose checkpoint sections differ from the checkpoint's, without --force."""


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


def check_spec(latest: Checkpoint | None, spec_hash: str, sections: tuple[str, ...], source: str | None,
               force: bool) -> None:
    """A resumed run goes on under the spec that wrote its checkpoint (`spec_hash`, the hash of its
    `sections`, is in every manifest); --force accepts another."""
    if latest is None or latest.meta.get("spec_hash") == spec_hash:
        return
    if not force:
        raise SpecChanged(f"{latest.path} was written under another spec (its {', '.join(sections)} "
                          f"sections differ from {source or 'this spec'}'s); resume under the spec that wrote "
                          "it, pass --force to continue under this one, or start over in a new run_dir")
    log.warning("--force: resuming from a checkpoint written under a different spec",
                extra=fields(checkpoint=latest.meta.get("spec_hash"), spec=spec_hash))


def _step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:07d}"


def _sync_dir(path: Path) -> None:
    # A rename or a new entry is durable only once the folder holding it is synced.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_digest(path: Path, sync: bool = False) -> dict[str, Any]:
    sha, size = hashlib.sha256(), 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
        if sync:
            os.fsync(fh.fileno())
    return {"bytes": size, "sha256": sha.hexdigest()}


def _write_atomic(path: Path, text: str) -> None:
    """A reader sees the old or the new file, never half; after a crash, one of them."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{os.getpid()}")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    _sync_dir(path.parent)


def _shape_problem(meta: Any) -> str | None:
    """What makes parsed manifest JSON unusable, or None. Its file names are joined to the folder's
    path, so one that is absolute or climbs out (`..`) would have gream read, hash or load elsewhere."""
    if not isinstance(meta, dict):
        return "unreadable manifest"
    step = meta.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return f"the manifest's step is {step!r}, not a step number"
    if not isinstance(meta.get("metrics", {}), dict):
        return "the manifest's metrics are not a mapping"
    files = meta.get("files")
    if not isinstance(files, dict):
        return "the manifest records no file sizes and hashes (written before gream verified checkpoints)"
    for name, want in files.items():
        if not name or PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
            return f"the manifest names {name!r}, a path outside the checkpoint folder"
        if not (isinstance(want, dict) and isinstance(want.get("bytes"), int) and isinstance(want.get("sha256"), str)):
            return f"the manifest's entry for {name} is {want!r}, not {{bytes: int, sha256: str}}"
    return None


def _size_problem(path: Path, files: dict[str, Any]) -> str | None:
    for name, want in files.items():
        try:
            size = (path / name).stat().st_size
        except OSError:
            return f"{name} is missing"
        if size != want["bytes"]:
            return f"{name} has {size} bytes, the manifest records {want['bytes']}"
    return None


class CheckpointManager:
    """Writes, finds and prunes checkpoints under `root`. A writer calls `open_run` before it saves;
    a reader (`gream status`, `gream export`) does not, sees every run's complete checkpoints,
    never names a best one, but `best()` still reads the writer's `best.json`."""

    def __init__(self, root: Path, keep: int, best: BestRule | None = None):
        self.root = root
        self.keep = keep
        self.rule = best
        self.run_id: str | None = None
        self.writer = 0  # this writer's number in run.json
        self._lock: IO[str] | None = None
        root.mkdir(parents=True, exist_ok=True)

    def __getstate__(self) -> dict[str, Any]:
        # A copy sent to another process (an SFT rank) saves under the opener's lock, fenced by `writer`.
        return {**self.__dict__, "_lock": None}

    def close(self) -> None:
        """Release the writer lock (a process's end releases it too)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def open_run(self, resume: bool, check: Callable[[Checkpoint | None], None] | None = None) -> str:
        """This run's id: kept from `run.json` on resume, else new. Refuses (CheckpointError) a folder
        another live writer holds, and a fresh run in a folder holding checkpoints, changing nothing;
        else removes what a crashed writer left half done. `check` (check_spec) sees a resumed run's
        latest checkpoint before anything is written: what it raises refuses the run as well."""
        lock = take_lock(self.root / LOCK_FILE, CheckpointError)
        try:
            self._open(resume, check)
        except BaseException:
            self.run_id = None
            lock.close()
            raise
        name_holder(lock)
        self._lock = lock
        for stale in sorted(self.root.glob(f"{TMP_PREFIX}*")):
            log.warning("removing what a crashed checkpoint write left", extra=fields(path=str(stale)))
            if stale.is_dir():
                shutil.rmtree(stale)
            else:
                stale.unlink()
        return self.run_id

    def _open(self, resume: bool, check: Callable[[Checkpoint | None], None] | None) -> None:
        run_file, held = self.root / RUN_FILE, sorted(p.name for p in self.root.glob("step-*"))
        if resume and run_file.exists():
            try:
                record = json.loads(run_file.read_text())
                self.run_id, self.writer = str(record["run_id"]), int(record.get("writer", 0)) + 1
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise CheckpointError(f"{run_file}: unreadable ({exc}); it names the run the checkpoints beside it "
                                      "belong to, so --resume cannot tell which to load") from exc
            if check is not None:
                check(self.latest())
        elif held:
            found = f"{self.root} holds checkpoints ({', '.join(held)})"
            if resume:
                raise CheckpointError(f"{found} but no {RUN_FILE} naming their run, so --resume cannot tell whose "
                                      "they are; choose a new run_dir; nothing there was deleted")
            raise CheckpointError(f"{found} of another run; pass --resume to continue that run, or choose a new "
                                  "run_dir (or remove that folder yourself); nothing there was deleted")
        else:
            self.run_id, self.writer = uuid.uuid4().hex, 1
            log.info("checkpoint run opened", extra=fields(run_id=self.run_id, folder=str(self.root)))
        _write_atomic(run_file, json.dumps({"run_id": self.run_id, "writer": self.writer}))

    def _check_writer(self) -> None:
        """CheckpointError when a later writer has opened this run since: its checkpoints are no
        longer this writer's to replace or prune."""
        try:
            record = json.loads((self.root / RUN_FILE).read_text())
        except (OSError, ValueError):
            record = None
        if record != {"run_id": self.run_id, "writer": self.writer}:
            raise CheckpointError(f"{self.root}: another writer opened this run after this one (writer {self.writer}; "
                                  f"{RUN_FILE} now holds {record}); this one stops without renaming or pruning")

    def save(self, step: int, write: Callable[[Path], None], meta: dict[str, Any]) -> Path:
        if self.run_id is None:
            raise RuntimeError("CheckpointManager.save before open_run: a checkpoint must name its run")
        final = _step_dir(self.root, step)
        tmp = self.root / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            write(tmp)
            files = {str(p.relative_to(tmp)): file_digest(p, sync=True) for p in sorted(tmp.rglob("*")) if p.is_file()}
            for folder in sorted(p for p in tmp.rglob("*") if p.is_dir()):
                _sync_dir(folder)
            with (tmp / MANIFEST).open("w") as fh:
                json.dump({"step": step, "run_id": self.run_id, "files": files, **meta}, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            _sync_dir(tmp)
            self._check_writer()
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if final.exists():  # this run's earlier save of the step (resumed before it), or a broken folder
            owner = self._manifest(final)[0].get("run_id")
            if owner not in (None, self.run_id):
                shutil.rmtree(tmp, ignore_errors=True)
                raise CheckpointError(f"{final} belongs to run {owner}, not this run ({self.run_id}); "
                                      "it was left in place")
            shutil.rmtree(final)
        os.rename(tmp, final)
        _sync_dir(self.root)
        done = self.complete()
        best = self._record_best(done)
        self._check_writer()
        self._prune(done, best)
        log.info("checkpoint saved", extra=fields(step=step, path=str(final),
                                                  best=best.step if best is not None else None))
        return final

    def _manifest(self, path: Path) -> tuple[dict[str, Any], str | None]:
        """(manifest, None) for a complete folder, else ({} or the manifest, what is wrong)."""
        try:
            meta = json.loads((path / MANIFEST).read_text())
        except OSError:
            return {}, "no manifest"
        except ValueError:
            return {}, "unreadable manifest"
        if (problem := _shape_problem(meta)) is not None:
            return meta if isinstance(meta, dict) else {}, problem
        return meta, _size_problem(path, meta["files"])

    def complete(self) -> list[Checkpoint]:
        """Complete checkpoints by step; for a writer only its own run's."""
        found = []
        for path in sorted(self.root.glob("step-*")):
            meta, problem = self._manifest(path)
            if problem is not None:
                log.warning("skipping incomplete checkpoint", extra=fields(path=str(path), problem=problem))
            elif self.run_id is None or meta.get("run_id") == self.run_id:
                found.append(Checkpoint(int(meta["step"]), path, meta))
        return found

    def latest(self) -> Checkpoint | None:
        done = self.complete()
        return done[-1] if done else None

    def verify(self, ckpt: Checkpoint) -> str | None:
        """What is wrong with the checkpoint's files (a hash that differs, a file the manifest does not
        list), or None: a folder that verifies is exactly what its manifest's hashes describe."""
        listed = {*ckpt.meta["files"], MANIFEST}
        if extra := sorted(n for p in ckpt.path.rglob("*") if p.is_file() and (n := p.relative_to(ckpt.path).as_posix())
                           not in listed):
            return f"{extra[0]} is in the folder but not in the manifest"
        for name, want in ckpt.meta["files"].items():
            try:
                got = file_digest(ckpt.path / name)
            except OSError as exc:
                return f"{name}: {exc.strerror or exc}"
            if got != {"bytes": want["bytes"], "sha256": want["sha256"]}:
                return f"{name} does not match the size and sha256 in the manifest"
        return None

    def load_latest(self, load: Callable[[Checkpoint], T],
                    failures: tuple[type[BaseException], ...]) -> tuple[Checkpoint, T] | None:
        """The newest checkpoint that verifies and that `load` takes without raising one of
        `failures`, with what `load` returned; each one passed over is logged as a warning. None
        when there is no checkpoint at all; CheckpointError when there are some but none loads."""
        tried = []
        for ckpt in reversed(self.complete()):
            problem = self.verify(ckpt)
            if problem is None:
                try:
                    return ckpt, load(ckpt)
                except failures as exc:
                    problem = f"loading failed: {type(exc).__name__}: {first_line(exc)}"
            log.warning("checkpoint cannot be loaded; trying the one before it",
                        extra=fields(path=str(ckpt.path), problem=problem))
            tried.append(f"{ckpt.path.name} ({problem})")
        if not tried and not any(self.root.glob("step-*")):
            return None
        raise CheckpointError(f"{self.root}: no checkpoint of this run can be loaded; "
                              f"{'; '.join(tried) or 'none of its step folders is a complete checkpoint of this run'}; "
                              "restore a good copy of the folder, or start over in a new run_dir")

    def best(self) -> Checkpoint | None:
        """The checkpoint `best.json` names, while it is complete; None before the first scored save."""
        try:
            step = int(json.loads((self.root / BEST_FILE).read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        path = _step_dir(self.root, step)
        meta, problem = self._manifest(path)
        return Checkpoint(step, path, meta) if problem is None else None

    def _record_best(self, done: list[Checkpoint]) -> Checkpoint | None:
        if self.rule is None:
            return None
        best = self.rule.pick(done)
        if best is None:  # nothing scored (yet) under this rule: no stale pointer from an earlier rule
            (self.root / BEST_FILE).unlink(missing_ok=True)
            return None
        record = {"step": best.step, "path": best.path.name, "metric": self.rule.metric, "mode": self.rule.mode,
                  "value": self.rule.score(best)}
        _write_atomic(self.root / BEST_FILE, json.dumps(record, indent=1))
        return best

    def _prune(self, done: list[Checkpoint], best: Checkpoint | None) -> None:
        for ckpt in done[: -self.keep]:
            if best is None or ckpt.step != best.step:
                shutil.rmtree(ckpt.path, ignore_errors=True)
