"""SFT checkpoints: one after every epoch, in `<run_dir>/sft/checkpoints/step-NNNNNNN` (N = epochs done),
written, verified, fenced and pruned (`checkpoint.keep`) by cluster/checkpoint.py as RL's are.

Each holds what a resumed run needs to go on as if it had never stopped: the DeepSpeed engine (weights,
optimizer, LR schedule), every rank's torch RNG (dropout draws from it) and the trainer's own state
(epochs and micro-steps done, the running weight average, the best validated epoch's weights and scores).
The batch order needs nothing: each epoch's is drawn from (sft.seed, epoch).

Rank 0 owns the folder (manifest, rename, pruning, which checkpoint to load); every rank writes and reads
its own share (its ZeRO partition, its RNG) in the folder rank 0 names, so the run folder must be one
every rank sees, as for RL.
"""
from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import torch

from cluster.checkpoint import Checkpoint, CheckpointManager, check_spec
from cluster.device import load_rng, save_rng, set_rng_state
from cluster.logs import fields
from cluster.spec import JobSpec

log = logging.getLogger(__name__)

SECTIONS = ("data", "index", "model", "sft")  # what the checkpoint's state depends on: the sft stage's hash
ENGINE, TAG, STATE = "engine", "sft", "trainer.pt"
# What a damaged or foreign checkpoint raises while DeepSpeed or torch.load reads it.
LOAD_FAILURES = (OSError, RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError)


def open_checkpoints(spec: JobSpec, resume: bool, force: bool) -> CheckpointManager:
    """The SFT run's checkpoint folder, fenced as RL's: a fresh run refuses another run's checkpoints,
    --resume one written under another spec unless `force` (CheckpointError / SpecChanged, exit 2)."""
    ckpts = CheckpointManager(spec.layout.sft_checkpoints, spec.checkpoint.keep)
    spec_hash = spec.section_hash(*SECTIONS)
    ckpts.open_run(resume, lambda latest: check_spec(latest, spec_hash, SECTIONS, spec.source, force))
    return ckpts


def _grouped() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class EpochCheckpoints:
    """Every rank makes one; `ckpts` is rank 0's opened manager (None on the other ranks)."""

    def __init__(self, spec: JobSpec, ckpts: CheckpointManager | None, rank: int, device: torch.device):
        self.ckpts, self.rank, self.device = ckpts, rank, device
        self.spec_hash = spec.section_hash(*SECTIONS)

    def _from_rank0(self, obj: Any) -> Any:
        if not _grouped():
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def _all(self, ok: bool) -> bool:
        if not _grouped():
            return ok
        import torch.distributed as dist

        flag = torch.tensor([int(ok)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def resuming(self) -> bool:
        """Whether this run has a checkpoint to go on from (a fresh run never has)."""
        return bool(self._from_rank0(self.ckpts is not None and self.ckpts.latest() is not None))

    def save(self, engine, state: dict[str, Any]) -> None:
        """A collective: every rank calls it after an epoch. `state` is the trainer's, with the `epochs` and
        micro-`step`s done (rank 0's is written)."""
        if engine.micro_steps % engine.gradient_accumulation_steps():
            log.warning("the epoch ended between two optimizer steps: the gradients accumulated since the last "
                        "one are not in the checkpoint, so a run resumed from it does not repeat this one exactly",
                        extra=fields(epoch=state["epochs"] - 1, grad_accum=engine.gradient_accumulation_steps()))

        def write(folder: Path | None) -> None:
            folder = Path(self._from_rank0(None if folder is None else str(folder)))
            engine.save_checkpoint(str(folder / ENGINE), tag=TAG)
            save_rng(folder, self.rank, self.device)
            if self.rank == 0:
                torch.save(state, folder / STATE)
            self._all(True)  # a barrier: every rank's files are in before rank 0 hashes them

        if self.ckpts is None:
            write(None)
        else:
            self.ckpts.save(state["epochs"], write, {"spec_hash": self.spec_hash, "epochs": state["epochs"],
                                                     "micro_steps": state["step"]})

    def _load_everywhere(self, engine, path: Path) -> dict[str, Any]:
        error = None
        try:
            loaded, _ = engine.load_checkpoint(str(path / ENGINE), tag=TAG)
            if loaded is None:
                raise FileNotFoundError(f"{path / ENGINE}: no DeepSpeed checkpoint tagged {TAG!r}")
            rng = load_rng(path, self.rank)
            state = torch.load(path / STATE, weights_only=True)
        except LOAD_FAILURES as exc:
            error = exc
        if not self._all(error is None):
            raise error or RuntimeError(f"{path}: another rank could not load it")
        set_rng_state(rng, self.device)
        return state

    def load(self, engine) -> dict[str, Any]:
        """Every rank loads the newest checkpoint all of them can (rank 0 names each candidate, older ones
        after a failure, then None); returns the trainer's state. Call it only when `resuming()`."""
        if self.ckpts is None:
            state = None
            while (path := self._from_rank0(None)) is not None:
                try:
                    state = self._load_everywhere(engine, Path(path))
                except LOAD_FAILURES:
                    state = None
            return state

        def attempt(ckpt: Checkpoint) -> dict[str, Any]:
            self._from_rank0(str(ckpt.path))
            return self._load_everywhere(engine, ckpt.path)

        try:
            ckpt, state = self.ckpts.load_latest(attempt, LOAD_FAILURES)
        finally:
            self._from_rank0(None)
        log.info("resumed", extra=fields(path=str(ckpt.path), epochs=state["epochs"], micro_steps=state["step"]))
        return state
