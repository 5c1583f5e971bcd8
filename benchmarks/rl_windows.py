"""Per-step timings of an RL side (gream's driver or TRL's trainer) and their rates over windows of
steps, for benchmarks/trl_grpo.py."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass
class Step:
    end: float  # perf_counter() when the step was complete
    completions: int  # sampled and scored this step
    informative: int  # in groups whose rewards differ (nonzero advantage)
    trained: int  # rows in the optimizer step
    rollout: float  # seconds generating
    reward: float  # seconds scoring
    reward_mean: float
    completion_len: float


@dataclass
class SideRun:
    start: float  # perf_counter() when the side was started (its first step includes start-up)
    steps: list[Step] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def windows(run: SideRun, warmup: int, size: int) -> list[dict]:
    """Rates over consecutive windows of `size` steps after `warmup` steps."""
    ends = [run.start] + [s.end for s in run.steps]
    out = []
    for first in range(warmup, len(run.steps) - size + 1, size):
        part, seconds = run.steps[first:first + size], ends[first + size] - ends[first]
        periods = [ends[i + 1] - ends[i] for i in range(first, first + size)]
        out.append({"seconds": seconds,
                    "completions/s": sum(s.completions for s in part) / seconds,
                    "informative/s": sum(s.informative for s in part) / seconds,
                    "trained/s": sum(s.trained for s in part) / seconds,
                    "step s": statistics.median(periods),
                    "rollout s": statistics.median(s.rollout for s in part),
                    "reward s": statistics.median(s.reward for s in part),
                    "other s": statistics.median(p - s.rollout - s.reward for p, s in zip(periods, part)),
                    "reward mean": statistics.fmean(s.reward_mean for s in part),
                    "length": statistics.fmean(s.completion_len for s in part)})
    return out


def summarize(runs: list[SideRun], warmup: int, size: int) -> dict:
    rows = [w for run in runs for w in windows(run, warmup, size)]
    if not rows:
        raise RuntimeError(f"no complete measured window: {[len(r.steps) for r in runs]} steps, "
                           f"warm-up {warmup}, window {size}")
    out = {key: statistics.median(w[key] for w in rows) for key in rows[0]}
    out["windows"] = [w["completions/s"] for w in rows]
    out["per run"] = [{key: statistics.median(w[key] for w in windows(run, warmup, size))
                       for key in ("completions/s", "informative/s", "trained/s")} for run in runs]
    return out
