"""A budgeted search over a grid of settings, shared by `gream baseline sasrec --tune` (sft/sasrec_tune.py)
and `gream sft --tune` (sft/sft_tune.py).

The grid is tried in an order shuffled by a fixed seed, so a budget that covers part of it samples every
axis rather than the first values of the first ones. Trials run until the wall-time budget is spent (at
least one runs); each gets the deadline, so that it can stop itself at a point where it still has a
validated result, and says so in its record.
"""
from __future__ import annotations

import itertools
import random
import time
from dataclasses import asdict, replace
from typing import Any, Callable, Mapping, Sequence, TypeVar

from cluster.errors import BadRequest

ORDER_SEED = 0
Config = TypeVar("Config")
Result = TypeVar("Result")


def grid_configs(base: Config, grid: Mapping[str, Sequence], seed: int = ORDER_SEED) -> list[Config]:
    """Every combination of the grid's values over `base` (a dataclass), in a seeded random order."""
    unknown = set(grid) - set(asdict(base))
    if unknown:
        raise BadRequest(f"grid keys {sorted(unknown)} are not {type(base).__name__} fields")
    keys = list(grid)
    configs = [replace(base, **dict(zip(keys, values))) for values in itertools.product(*(grid[k] for k in keys))]
    random.Random(seed).shuffle(configs)
    return configs


def budgeted_search(configs: Sequence[Config], budget_s: float,
                    trial: Callable[[Config, float], tuple[float, Result, dict[str, Any]]]
                    ) -> tuple[Config, Result, list[dict[str, Any]]]:
    """`trial(config, deadline)` -> (validation score, result, record) for the configs in order until
    `budget_s` seconds have passed; returns the best-scoring config, its result, and every trial's
    record with its wall time (`secs`)."""
    if budget_s <= 0:
        raise BadRequest(f"--budget-s must be positive, got {budget_s}")
    deadline = time.perf_counter() + budget_s
    best: tuple[float, Config, Result] | None = None
    trials = []
    for cfg in configs:
        if trials and time.perf_counter() >= deadline:
            break
        t0 = time.perf_counter()
        score, result, record = trial(cfg, deadline)
        trials.append({**record, "secs": round(time.perf_counter() - t0, 1)})
        if best is None or score > best[0]:
            best = (score, cfg, result)
    assert best is not None  # the loop always runs its first config
    return best[1], best[2], trials
