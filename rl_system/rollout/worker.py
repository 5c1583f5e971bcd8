"""RolloutWorker: a Ray actor that owns one vLLM engine and serves grouped sampling, constrained
beams and weight pushes.

The actor is threaded (`max_concurrency` > 1) so `weight_version()` answers while a batch is being
generated; every use of the engine holds one lock, so a weight push waits for the batch in flight
and no generation starts until the new weights (and a cleared prefix cache) are in place.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Sequence

from cluster.logs import fields
from rl_system.messages import BeamCandidate, Completion, RolloutGroup
from rl_system.rollout.beam_search import constrained_beam, forced_steps
from rl_system.rollout.constraint import (
    EXTRA_ARGS_KEY,
    MODES,
    ConstraintError,
    ConstraintTable,
)
from rl_system.rollout.engine import EngineConfig, build_llm
from rl_system.weight_sync.group import GROUP_TIMEOUT_S

log = logging.getLogger(__name__)

Prompt = str | Sequence[int]


class RolloutWorker:
    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        self.table = ConstraintTable.load(cfg.constraint_path)
        self.sid_depth = len(self.table.sids[0])
        self.forced_steps = forced_steps(self.table.sids)
        self.llm = build_llm(cfg)
        self._lock = threading.Lock()
        self._version = 0

    # ------------------------------------------------------------------ generation
    def _inputs(self, prompts: Sequence[Prompt]) -> list:
        from vllm import TokensPrompt

        if isinstance(prompts, (str, bytes)):
            raise TypeError("prompts must be a list of strings or of token-id lists, got a single string")
        return [p if isinstance(p, str) else TokensPrompt(prompt_token_ids=list(p)) for p in prompts]

    def _check_mode(self, mode: str | None) -> None:
        if mode is not None and mode not in MODES:
            raise ConstraintError(f"mode must be one of {MODES} or None, got {mode!r}")
        if mode == "reasoning":
            self.table.require_reasoning()

    def generate(self, prompts: Sequence[Prompt], n: int, temperature: float = 1.0, max_tokens: int = 16,
                 mode: str | None | Sequence[str | None] = "direct", top_p: float = 1.0,
                 seeds: Sequence[int] | None = None) -> list[RolloutGroup]:
        """`n` completions per prompt with per-token logprobs. `mode` is "direct", "reasoning" or
        None (unconstrained), for all prompts or one per prompt. `seeds`: one per prompt, completion i
        of prompt p drawn from seeds[p] + i whatever else the engine runs (None: the engine's stream)."""
        from vllm import SamplingParams

        modes = [mode] * len(prompts) if mode is None or isinstance(mode, str) else list(mode)
        if len(modes) != len(prompts):
            raise ValueError(f"got {len(modes)} modes for {len(prompts)} prompts")
        for m in set(modes):
            self._check_mode(m)
        seeds = [None] * len(prompts) if seeds is None else list(seeds)
        if len(seeds) != len(prompts):
            raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
        params = [SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, logprobs=0,
                                 seed=seed, extra_args={EXTRA_ARGS_KEY: m} if m else None)
                  for m, seed in zip(modes, seeds)]
        inputs = self._inputs(prompts)
        with self._lock:
            start = time.perf_counter()
            outputs = self.llm.generate(inputs, params, use_tqdm=False)
            version = self._version
        groups = []
        for out in outputs:
            completions = []
            for c in out.outputs:
                token_ids = list(c.token_ids)
                lps = [c.logprobs[i][t].logprob for i, t in enumerate(token_ids)]
                completions.append(Completion(token_ids, c.text, lps, c.finish_reason))
            groups.append(RolloutGroup(list(out.prompt_token_ids), completions, version))
        tokens = sum(len(c.token_ids) for g in groups for c in g.completions)
        log.info("generated", extra=fields(prompts=len(groups), n=n, mode=mode, tokens=tokens,
                                           secs=round(time.perf_counter() - start, 3), version=version))
        return groups

    def beam(self, prompts: Sequence[Sequence[int]], width: int,
             prefixes: Sequence[Sequence[int]] | None = None) -> list[list[BeamCandidate]]:
        """Top-`width` distinct SIDs per prompt (token ids), by trie-constrained beam search; with
        `prefixes`, the SIDs under each prompt's given first tokens."""
        with self._lock:
            return constrained_beam(self.llm, prompts, width, self.sid_depth, self.forced_steps, prefixes)

    def score(self, prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> list[float]:
        """Unconstrained log-probabilities of a fixed completion after a prompt, one per completion
        token, from the engine's current weights (prompt logprobs are computed on raw logits)."""
        from vllm import SamplingParams, TokensPrompt

        ids = list(prompt_ids) + list(completion_ids)
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        with self._lock:
            out = self.llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)[0]
        start = len(prompt_ids)
        return [out.prompt_logprobs[i][ids[i]].logprob for i in range(start, len(ids))]

    def weight_version(self) -> int:
        return self._version

    # ------------------------------------------------------------------ weights
    def num_ranks(self) -> int:
        """Ranks this worker adds to the weight group: one per tensor-parallel vLLM worker."""
        return self.cfg.tensor_parallel

    def init_weight_group(self, master_addr: str, port: int, rank_offset: int, world_size: int, backend: str,
                          timeout_s: float = GROUP_TIMEOUT_S) -> list[int]:
        return self.llm.collective_rpc("init_weight_group",
                                       args=(master_addr, port, rank_offset, world_size, backend, timeout_s))

    def receive_weights(self, wire: list[dict], version: int) -> dict:
        """Load a push (plan `wire`, bytes over the weight group); returns the slowest rank's receipt
        (tensors, in_place, wait_s, load_s)."""
        with self._lock:
            start = time.perf_counter()
            receipts = self.llm.collective_rpc("receive_weights", args=(wire,))
            # Cached KV blocks were computed with the old weights.
            self.llm.reset_prefix_cache()
            self._version = version
        receipt = max(receipts, key=lambda r: r["load_s"])
        log.info("received weights", extra=fields(version=version, tensors=receipt["tensors"],
                                                  in_place=receipt["in_place"], load_secs=round(receipt["load_s"], 3),
                                                  secs=round(time.perf_counter() - start, 3)))
        return receipt

    def receive_raw_broadcast(self, sizes: list[int]) -> int:
        with self._lock:
            return self.llm.collective_rpc("receive_raw_broadcast", args=(sizes,))[0]


def start_rollout_worker(cfg: EngineConfig, cpus: float = 1, gpus: float = 0, scheduling_strategy=None):
    """A `RolloutWorker` Ray actor; its constructor starts the engine, so wait on a call before timing."""
    import ray

    actor = ray.remote(RolloutWorker).options(num_cpus=cpus, num_gpus=gpus, max_concurrency=4,
                                              scheduling_strategy=scheduling_strategy)
    return actor.remote(cfg)


def connect_weight_group(sender, workers: Sequence, master_addr: str, port: int, backend: str) -> None:
    """Join the sender (rank 0, this process) and every worker's vLLM ranks into one group."""
    import ray

    ranks = ray.get([w.num_ranks.remote() for w in workers])
    offsets = [1 + sum(ranks[:i]) for i in range(len(workers))]
    if sender.world_size != 1 + sum(ranks):
        raise ValueError(f"sender world_size {sender.world_size} != 1 + rollout ranks {sum(ranks)}")
    refs = [w.init_weight_group.remote(master_addr, port, off, sender.world_size, backend)
            for w, off in zip(workers, offsets)]
    sender.connect()
    ray.get(refs)
