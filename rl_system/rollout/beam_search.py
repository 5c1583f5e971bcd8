"""Trie-constrained beam search on top of `LLM.generate`.

`LLM.beam_search` ignores custom logits processors, so beams are expanded here one SID position at
a time: every live beam becomes one greedy request for a single token whose prompt is the original
prompt plus the beam's SID prefix, with the trie processor started at that prefix
(`extra_args[PREFIX_KEY]`) and `logprobs=width`. Engines run with processed logprobs, so the
returned top tokens are the best *allowed* tokens and their logprobs are normalised over the
allowed set. Prefix caching makes the repeated prompt cheap. After `depth` steps every beam is a
complete SID; beams are distinct prefixes by construction, so the results are distinct SIDs.

A beam whose prefix has a single child in the trie is extended without a request: its only allowed
token has constrained logprob 0. Deep in a sparse catalogue (and on the dedup level) most prefixes
are like that, so this removes most requests after the first two levels.

A beam may start from a given SID prefix (think-ahead fixes the first tokens offline): the prefix is
held by the beam, not the prompt, so the trie processor knows where in the SID it stands; its
tokens count 0 in the score, which ranks the completions under it.
"""
from __future__ import annotations

import math
from typing import Sequence

from indexing.trie import sid_children
from rl_system.messages import BeamCandidate
from rl_system.rollout.constraint import EXTRA_ARGS_KEY, PREFIX_KEY


def forced_steps(sids: Sequence[Sequence[int]]) -> dict[tuple[int, ...], int]:
    """Every SID prefix with exactly one child in the trie, mapped to that child."""
    return {prefix: next(iter(kids)) for prefix, kids in sid_children(sids).items() if len(kids) == 1}


def constrained_beam(llm, prompts: Sequence[Sequence[int]], width: int, depth: int,
                     forced: dict[tuple[int, ...], int],
                     prefixes: Sequence[Sequence[int]] | None = None) -> list[list[BeamCandidate]]:
    """The best `width` SIDs (token ids, best first) that follow each prompt (token ids); `forced`
    is `forced_steps` of the engine's SIDs; `prefixes`: per prompt, the SID tokens every candidate
    starts with (returned as part of it)."""
    from vllm import SamplingParams, TokensPrompt

    if width < 1 or depth < 1:
        raise ValueError(f"beam width and depth must be >= 1, got width={width}, depth={depth}")
    prefixes = [()] * len(prompts) if prefixes is None else [tuple(p) for p in prefixes]
    if len(prefixes) != len(prompts) or any(len(p) >= depth for p in prefixes):
        raise ValueError(f"expected one SID prefix shorter than {depth} tokens per prompt")
    beams: list[list[BeamCandidate]] = [[BeamCandidate(p, (0.0,) * len(p))] for p in prefixes]
    for _ in range(depth - min((len(p) for p in prefixes), default=0)):
        owners, requests, params = [], [], []
        expanded: list[list[BeamCandidate]] = [[] for _ in prompts]
        for p, live in enumerate(beams):
            for beam in live:
                if len(beam.token_ids) == depth:
                    expanded[p].append(beam)
                    continue
                if beam.token_ids in forced:
                    expanded[p].append(BeamCandidate(beam.token_ids + (forced[beam.token_ids],), beam.token_logprobs + (0.0,)))
                    continue
                owners.append((p, beam))
                requests.append(TokensPrompt(prompt_token_ids=list(prompts[p]) + list(beam.token_ids)))
                params.append(SamplingParams(
                    max_tokens=1, temperature=0.0, logprobs=width, detokenize=False,
                    extra_args={EXTRA_ARGS_KEY: "direct", PREFIX_KEY: list(beam.token_ids)}))
        outputs = llm.generate(requests, params, use_tqdm=False) if requests else []
        for (p, beam), out in zip(owners, outputs):
            # Up to width + 1 entries (the top tokens plus the sampled one); masked tokens are -inf.
            for token, lp in out.outputs[0].logprobs[0].items():
                if math.isfinite(lp.logprob):
                    expanded[p].append(BeamCandidate(beam.token_ids + (token,), beam.token_logprobs + (lp.logprob,)))
        beams = [sorted(c, key=lambda b: (-b.logprob, b.token_ids))[:width] for c in expanded]
    return beams
