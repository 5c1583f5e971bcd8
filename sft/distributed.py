"""SFT over several DeepSpeed ranks (`cluster.sft.num_ranks` > 1), each a Ray actor in one placement
group: every rank builds the same examples and batch plan and trains its share of each epoch's
plan (see `Trainer._epoch_batches`); rank 0 writes the model and the metrics.

A rank that fails ends the run at once: its peers would wait for it in their next collective (until
`cluster.sft.collective_timeout_s`), and a rank hung for good would never answer at all, so the
driver does not wait for every rank but stops them all at the first failure (SftRankFailed, exit 4;
`--resume` goes on from the last complete epoch). A rank that stops answering a health call for
`collective_timeout_s` counts as failed too: gloo's timeout does not cover every wait (a peer
frozen in the middle of a gradient all-reduce leaves the other waiting in it for good).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from cluster import ranks
from cluster.checkpoint import CheckpointManager
from cluster.errors import Resumable, first_line
from cluster.logs import fields, setup_logging
from cluster.spec import JobSpec
from sft.tasks import ReasoningRecord
from sft.trainer import Trainer

log = logging.getLogger(__name__)


class SftRankFailed(Resumable):
    """An SFT rank failed (or timed out in a collective, waiting for a hung one), or left the driver's
    health call unanswered; every rank was stopped."""

    exit_code = 4


HEALTH_EVERY_S = 10.0  # how often the driver asks every rank to answer while none has finished


def _check_answering(actors: list, hang_s: float) -> None:
    """SftRankFailed naming the first rank that does not answer a health call within `hang_s`."""
    import ray

    calls = [a.alive.remote() for a in actors]
    answered, _ = ray.wait(calls, num_returns=len(calls), timeout=hang_s)
    silent = [rank for rank, call in enumerate(calls) if call not in answered]
    if silent:
        raise SftRankFailed(f"SFT rank {silent[0]} did not answer for {hang_s:.0f}s "
                            "(cluster.sft.collective_timeout_s): hung; every rank was stopped; the last complete "
                            "epoch checkpoint stands")


def _all_or_first_failure(refs: list, actors: list, hang_s: float) -> list:
    """Every rank's result, or SftRankFailed as soon as one rank fails or stops answering (`hang_s`),
    whatever the others are doing."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=HEALTH_EVERY_S)
        if not done:
            _check_answering(actors, hang_s)
            continue
        try:
            ray.get(done)
        except (RayTaskError, RayActorError) as exc:  # what a rank raised, or its actor's death
            rank = refs.index(done[0])
            raise SftRankFailed(f"SFT rank {rank} failed ({type(exc).__name__}: {first_line(exc)}); every rank "
                                "was stopped; the last complete epoch checkpoint stands") from exc
    return ray.get(refs)


class SftRank:
    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size

    def rendezvous(self) -> tuple[str, int]:
        return ranks.rendezvous()

    def alive(self) -> bool:
        """Answered beside `train` (two calls at a time): a frozen process answers nothing."""
        return True

    def train(self, spec: JobSpec, reasoning: Sequence[ReasoningRecord], preferences: dict[int, str] | None,
              checkpoints: CheckpointManager, master_addr: str, master_port: int) -> str:
        setup_logging(spec.logging.level)
        ranks.set_rank_env(self.rank, self.world_size, master_addr, master_port)
        return str(Trainer(spec, reasoning, preferences, checkpoints if self.rank == 0 else None).train())


def train_on_ray(spec: JobSpec, reasoning: Sequence[ReasoningRecord], preferences: dict[int, str] | None,
                 checkpoints: CheckpointManager) -> Path:
    """`checkpoints`: the run's, opened by the stage; rank 0 writes and loads them."""
    import ray

    from cluster.placement import init_ray, ranks_group
    from sft.backbone import resolve_backbone

    resolve_backbone(spec)  # an embedded backbone is built here once, not raced for by every rank
    init_ray(spec.cluster)
    c = spec.cluster.sft
    group = ranks_group(spec.name, "sft", spec.cluster.sft)
    actors: list = []
    try:
        actors, addr, port = ranks.start_rank_actors(SftRank, c.num_ranks, c.cpus_per_rank, c.gpus_per_rank, group,
                                                     max_concurrency=2)
        log.info("sft ranks started", extra=fields(ranks=c.num_ranks, cpus_per_rank=c.cpus_per_rank,
                                                    gpus_per_rank=c.gpus_per_rank))
        paths = _all_or_first_failure([a.train.remote(spec, list(reasoning), preferences, checkpoints, addr, port)
                                       for a in actors], actors, c.collective_timeout_s)
    finally:
        for actor in actors:
            ray.kill(actor)
        group.remove()
    return Path(paths[0])
