"""Trie-constrained beam search on top of `LLM.generate`.

`LLM.beam_search` ignores custom logits processors, so beams are expanded here one SID position at
a time: every live beam becomes one greedy request for a single token whose prompt is the original
prompt plus the beam's SID prefix, with the trie processor started at that prefix
(`extra_args[PREFIX_KEY]`) and `logprobs=width`. Engines run with processed logprobs, so the
returned top tokens are the best *allowed* tokens and their logprobs are normalised over the
allowed set. Prefix caching makes the repeated prompt cheap. After `depth` steps every beam is a
complete SID; beams are distinct prefixes by construction, so the results are distinct SIDs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from rl_system.logits_processor import EXTRA_ARGS_KEY, PREFIX_KEY


@dataclass(frozen=True)
class BeamCandidate:
    token_ids: tuple[int, ...]
    logprob: float  # sum over the SID tokens of the constrained log-probabilities


def constrained_beam(llm, prompts: Sequence[Sequence[int]], width: int, depth: int) -> list[list[BeamCandidate]]:
    """The best `width` SIDs (token ids, best first) that follow each prompt (token ids)."""
    from vllm import SamplingParams, TokensPrompt

    if width < 1 or depth < 1:
        raise ValueError(f"beam width and depth must be >= 1, got width={width}, depth={depth}")
    beams: list[list[BeamCandidate]] = [[BeamCandidate((), 0.0)] for _ in prompts]
    for _ in range(depth):
        owners, requests, params = [], [], []
        for p, live in enumerate(beams):
            for beam in live:
                owners.append((p, beam))
                requests.append(TokensPrompt(prompt_token_ids=list(prompts[p]) + list(beam.token_ids)))
                params.append(SamplingParams(
                    max_tokens=1, temperature=0.0, logprobs=width, detokenize=False,
                    extra_args={EXTRA_ARGS_KEY: "direct", PREFIX_KEY: list(beam.token_ids)}))
        outputs = llm.generate(requests, params, use_tqdm=False)
        expanded: list[list[BeamCandidate]] = [[] for _ in prompts]
        for (p, beam), out in zip(owners, outputs):
            # Up to width + 1 entries (the top tokens plus the sampled one); masked tokens are -inf.
            for token, lp in out.outputs[0].logprobs[0].items():
                if math.isfinite(lp.logprob):
                    expanded[p].append(BeamCandidate(beam.token_ids + (token,), beam.logprob + lp.logprob))
        beams = [sorted(c, key=lambda b: (-b.logprob, b.token_ids))[:width] for c in expanded]
    return beams
