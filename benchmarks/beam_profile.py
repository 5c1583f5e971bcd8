"""Where the time of a constrained beam evaluation goes, per side of benchmarks/beam_eval.py.

In-process sides (HF generate, gream's torch beam): seconds inside the decoder's forward calls
(hooks on the decoder module; the output layer counts as search), calls and rows, and for HF the
seconds inside `prefix_allowed_tokens_fn`; the rest is the side's own search (output layer, beam
bookkeeping, trie masks, cache reorders). vLLM side: inside the rollout worker, `constrained_beam`
with its engine wrapped so each `generate` call (one per SID level) is timed with its request
count, plus a calibration: the same number of plain one-token requests (no logprobs, no
constraint) on the same prompts, the engine's fixed cost per request.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Sequence


@dataclass
class Tally:
    seconds: float = 0.0
    calls: int = 0
    rows: int = 0


@dataclass
class InProcessProfile:
    total: float
    forward: Tally
    constraint: Tally = field(default_factory=Tally)  # HF: prefix_allowed_tokens_fn

    def lines(self, side: str, users: int) -> list[str]:
        rest = self.total - self.forward.seconds - self.constraint.seconds
        out = [f"{side}: {self.total:.2f} s for {users} users; decoder forward {self.forward.seconds:.2f} s "
               f"({self.forward.seconds / self.total:.0%}, {self.forward.calls} calls, {self.forward.rows} rows)"]
        if self.constraint.calls:
            out.append(f"  prefix_allowed_tokens_fn {self.constraint.seconds:.2f} s "
                       f"({self.constraint.seconds / self.total:.0%}, {self.constraint.calls} calls)")
        out.append(f"  search outside the model {rest:.2f} s ({rest / self.total:.0%})")
        return out


@contextmanager
def forward_tally(model):
    """Seconds, calls and batch rows of `model`'s forward while the block runs."""
    tally, started = Tally(), []

    def before(_module, args, kwargs):
        started.append(time.perf_counter())
        ids = kwargs.get("input_ids", args[0] if args else None)
        tally.rows += 0 if ids is None else int(ids.shape[0])

    def after(*_):
        tally.seconds += time.perf_counter() - started.pop()
        tally.calls += 1

    handles = [model.register_forward_pre_hook(before, with_kwargs=True), model.register_forward_hook(after)]
    try:
        yield tally
    finally:
        for h in handles:
            h.remove()


def timed(fn, tally: Tally):
    """`fn` with its calls and seconds added to `tally`."""
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            tally.seconds += time.perf_counter() - start
            tally.calls += 1
    return wrapper


def vllm_profile(worker, prompt_ids: Sequence[Sequence[int]], width: int) -> dict:
    """Inside the rollout worker actor: one beam pass with each engine call timed, then the same
    number of plain one-token requests on the same prompts."""
    import ray

    prompts = [list(p) for p in prompt_ids]

    def run(self) -> dict:
        from vllm import SamplingParams, TokensPrompt

        from rl_system.rollout.beam_search import constrained_beam

        levels = []

        class TimedEngine:
            def generate(_, requests, params, use_tqdm=False):
                start = time.perf_counter()
                out = self.llm.generate(requests, params, use_tqdm=use_tqdm)
                levels.append((len(requests), time.perf_counter() - start))
                return out

        start = time.perf_counter()
        constrained_beam(TimedEngine(), prompts, width, self.sid_depth, self.forced_steps)
        total = time.perf_counter() - start
        requests = sum(n for n, _ in levels)
        plain = [TokensPrompt(prompt_token_ids=prompts[i % len(prompts)]) for i in range(requests)]
        start = time.perf_counter()
        self.llm.generate(plain, SamplingParams(max_tokens=1, temperature=0.0, detokenize=False), use_tqdm=False)
        return {"total": total, "levels": levels, "plain_seconds": time.perf_counter() - start}

    return ray.get(worker.__ray_call__.remote(run))


def vllm_lines(profile: dict, users: int) -> list[str]:
    total, levels = profile["total"], profile["levels"]
    requests = sum(n for n, _ in levels)
    in_engine = sum(s for _, s in levels)
    plain = profile["plain_seconds"]
    return [f"gream (vLLM): {total:.2f} s for {users} users in the worker; {requests} engine requests "
            f"({requests / users:.1f} per user) in {len(levels)} generate calls: "
            + ", ".join(f"{n} requests {s:.2f} s" for n, s in levels),
            f"  inside generate {in_engine:.2f} s ({in_engine / total:.0%}), {1e3 * in_engine / max(requests, 1):.2f} ms "
            f"per request; search outside {total - in_engine:.2f} s",
            f"  the same {requests} requests as plain one-token prompts (no logprobs, no trie): {plain:.2f} s, "
            f"{1e3 * plain / max(requests, 1):.2f} ms each: the engine's fixed cost per request"]
