"""Trie-constrained beam search over the SID positions with a Hugging Face causal LM, in torch: the
same ranking as the vLLM beam (rl_system/rollout/beam_search.py), for the model being trained (SFT
validation, RL's in-run validation on the learner) and for evaluation and serving on CPUs, where a
vLLM engine pays a fixed cost per request that dwarfs a small model's forward.

Scores are the sum over the SID tokens of log-probabilities normalised over the tokens the trie
allows at that position (vLLM's processed logprobs), so a beam ranks real items only. The prompts
run once; the key/value cache is then copied to `width` rows per prompt and reordered as beams are
kept, so each further SID position costs one token per beam. Every beam follows the trie, and
beams are distinct prefixes, so the results are distinct SIDs. A beam may start under a given SID
prefix (think-ahead): the prefix tokens run with the prompt and count 0 in the score.

Where the time went on every Office user (BENCHMARKS.md, "Constrained beam evaluation"), and what
this module does about it: left padding (prompts are batched by length), copies of the whole cache
at every SID level (the prompt's keys are copied to the beams once; a step writes its token in
place and a reorder moves only the SID positions), and the output layer over the whole vocabulary
(a step computes the logits of its SID level's tokens only, where the model allows it).

`beam_search` is the entry point for many prompts: it batches them by length and returns the
results in the callers' order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from transformers.cache_utils import Cache, DynamicLayer

from cluster.device import autocast
from indexing.trie import SidTrie

BATCH = 32  # prompts per forward: width x BATCH beams; wider batches were no faster on 2 cores


@dataclass(frozen=True)
class Beams:
    """The `width` best SIDs after each of P prompts, best first; where the trie holds fewer than
    `width` SIDs (or the prefix names none) the rest have row -1 and score -inf."""

    rows: torch.Tensor  # [P, W] the trie's build-order row of each SID (`SidTrie.from_index`: index.items()[row])
    tokens: torch.Tensor  # [P, W, depth] token ids, the prefix included
    token_logprobs: torch.Tensor  # [P, W, depth] constrained log-probabilities, 0 on prefix tokens
    scores: torch.Tensor  # [P, W] summed constrained log-probabilities

    @staticmethod
    def cat(parts: Sequence["Beams"]) -> "Beams":
        return Beams(*(torch.cat([getattr(p, f) for p in parts]) for f in ("rows", "tokens", "token_logprobs", "scores")))

    def take(self, order: torch.Tensor) -> "Beams":
        return Beams(self.rows[order], self.tokens[order], self.token_logprobs[order], self.scores[order])


class _BeamLayer(DynamicLayer):
    """One attention layer's keys and values for `width` beams a prompt. The prompt's are copied to
    every beam once, into a buffer with room for the SID tokens; each SID token is written in place;
    and a reorder of the beams moves only the SID positions, since a prompt's beams share the rest.
    (A plain DynamicCache copies the whole cache twice a step: concatenating, then reordering.)"""

    def __init__(self, prompt: DynamicLayer, width: int, room: int):
        super().__init__()
        n, heads, length, dim = prompt.keys.shape
        self._k, self._v = (self._beams(t, width, room) for t in (prompt.keys, prompt.values))
        self.dtype, self.device, self.is_initialized = prompt.keys.dtype, prompt.keys.device, True
        self.prompt_len = self.length = length
        self._expose()

    @staticmethod
    def _beams(prompt: torch.Tensor, width: int, room: int) -> torch.Tensor:
        n, heads, length, dim = prompt.shape
        buf = prompt.new_empty(n, width, heads, length + room, dim)
        buf[:, :, :, :length] = prompt[:, None]  # one broadcast copy, no intermediate
        return buf.view(n * width, heads, length + room, dim)

    def _expose(self) -> None:
        self.keys, self.values = self._k[:, :, :self.length], self._v[:, :, :self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        new = key_states.shape[-2]
        self._k[:, :, self.length:self.length + new] = key_states
        self._v[:, :, self.length:self.length + new] = value_states
        self.length += new
        self._expose()
        return self.keys, self.values

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        tail = slice(self.prompt_len, self.length)
        self._k[:, :, tail] = self._k[beam_idx, :, tail]
        self._v[:, :, tail] = self._v[beam_idx, :, tail]


def _beam_cache(prompt_cache, width: int, room: int):
    """The prompt's cache as `width` beams a prompt (a cache of other layer kinds is copied as is)."""
    if all(type(layer) is DynamicLayer for layer in prompt_cache.layers):
        return Cache(layers=[_BeamLayer(layer, width, room) for layer in prompt_cache.layers])
    prompt_cache.reorder_cache(torch.arange(prompt_cache.layers[0].keys.shape[0]).repeat_interleave(width))
    return prompt_cache


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids, attention mask and position ids of left-padded prompts (positions count real tokens)."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long)
    return ids, mask, (mask.cumsum(1) - 1).clamp_min(0)


def _head_split(model):
    """(decoder, output layer) when the logits are the output layer on the decoder's last hidden
    state and nothing more (Llama, Qwen, SmolLM2 ...), so a step can compute the logits of one SID
    level's tokens only; None otherwise (soft-capped or scaled logits, ZeRO-3-partitioned weights)."""
    head, cfg = model.get_output_embeddings(), model.config
    if (not isinstance(head, torch.nn.Linear) or head.weight.dim() != 2 or head.weight.numel() == 0
            or getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None)):
        return None
    return model.get_decoder(), head


def _step(model, split, columns: torch.Tensor, vocab_size: int, **inputs) -> tuple[torch.Tensor, object]:
    """The last position's logits [B, V] (the `columns` tokens' only, the rest -inf, when the model
    splits) and the cache."""
    if split is None:
        out = model(**inputs, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1], out.past_key_values
    decoder, head = split
    out = decoder(**inputs, use_cache=True)
    hidden = out.last_hidden_state[:, -1]
    logits = hidden.new_full((hidden.shape[0], vocab_size), float("-inf"))
    logits[:, columns] = torch.nn.functional.linear(hidden, head.weight[columns],
                                                    None if head.bias is None else head.bias[columns])
    return logits, out.past_key_values


def _constrained_logprobs(logits: torch.Tensor, trie: SidTrie, states: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(trie.apply(logits.float(), states), dim=-1)


@torch.no_grad()
def constrained_beam(model, prompts: Sequence[Sequence[int]], trie: SidTrie, width: int, pad_id: int,
                     device: torch.device, amp_dtype: torch.dtype = torch.float32,
                     prefixes: Sequence[Sequence[int]] | None = None) -> Beams:
    """One batch: the `width` best SIDs after each prompt. `prefixes`: per prompt, the SID tokens
    every candidate starts with, all of one length below the SID depth."""
    if width < 1 or not prompts:
        raise ValueError(f"beam width must be >= 1 and prompts non-empty, got width={width}, {len(prompts)} prompts")
    prefixes = [()] * len(prompts) if prefixes is None else [tuple(p) for p in prefixes]
    fixed = {len(p) for p in prefixes}
    if len(prefixes) != len(prompts) or len(fixed) != 1 or fixed.pop() >= trie.depth:
        raise ValueError(f"expected one SID prefix per prompt, all of one length below the depth {trie.depth}")
    k = len(prefixes[0])
    trie = trie.to(device)
    n = len(prompts)
    ids, mask, positions = (t.to(device) for t in left_pad([list(p) + list(f) for p, f in zip(prompts, prefixes)], pad_id))
    split = _head_split(model)
    vocab_size = trie.vocab_size
    # A level's tokens, and the end tokens: the only ones a filler beam (past the trie's SIDs) may take.
    columns = [torch.cat([trie.columns[d], trie.end_token_ids]) for d in range(trie.depth)]
    with autocast(device.type, amp_dtype):
        logits, cache = _step(model, split, columns[k], vocab_size, input_ids=ids, attention_mask=mask,
                              position_ids=positions)
    start = trie.states_for_prefixes(torch.tensor(prefixes, dtype=torch.long).reshape(n, k))
    # A prefix that left the trie, or reached a leaf, names no SID to complete: its beams stay -inf.
    inside = (start >= 0) & ~trie.is_leaf(start)
    top, tokens = trie.topk(_constrained_logprobs(logits, trie, start), start, width)  # [P, W]
    scores = torch.where(inside[:, None], top, float("-inf"))
    states = trie.advance(start.repeat_interleave(width), tokens.reshape(-1))  # one row per beam, [P * W]
    history = tokens.reshape(-1, 1)
    steps = top.reshape(-1, 1)
    cache = _beam_cache(cache, width, trie.depth - k - 1)
    # The beams of a prompt share its padding and positions, so these never need reordering.
    mask = mask.repeat_interleave(width, 0)
    position = positions[:, -1:].repeat_interleave(width, 0)
    for level in range(k + 1, trie.depth):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        position = position + 1
        with autocast(device.type, amp_dtype):
            logits, cache = _step(model, split, columns[level], vocab_size, input_ids=history[:, -1:],
                                  attention_mask=mask, position_ids=position, past_key_values=cache)
        top, next_tokens = trie.topk(_constrained_logprobs(logits, trie, states), states, width)
        candidates = (scores.reshape(-1, 1) + top).reshape(n, width * width)
        scores, pick = candidates.topk(width, dim=1)
        parents = (torch.arange(n, device=device)[:, None] * width + pick // width).reshape(-1)
        chosen = next_tokens.reshape(n, width * width).gather(1, pick).reshape(-1, 1)
        gained = top.reshape(n, width * width).gather(1, pick).reshape(-1, 1)
        history = torch.cat([history[parents], chosen], dim=1)
        steps = torch.cat([steps[parents], gained], dim=1)
        states = trie.advance(states[parents], chosen[:, 0])
        cache.reorder_cache(parents)
    found = torch.isfinite(scores)
    rows = torch.where(found, trie.sid_of_leaf(states).reshape(n, width), -1)
    head = torch.tensor(prefixes, dtype=torch.long, device=device).reshape(n, 1, k).expand(n, width, k)
    depth = trie.depth
    return Beams(rows.cpu(), torch.cat([head, history.reshape(n, width, depth - k)], 2).cpu(),
                 torch.cat([torch.zeros(n, width, k, device=device), steps.reshape(n, width, depth - k)], 2).cpu(),
                 scores.cpu())


def beam_search(model, prompts: Sequence[Sequence[int]], trie: SidTrie, width: int, pad_id: int,
                device: torch.device, amp_dtype: torch.dtype = torch.float32, batch: int = BATCH,
                prefixes: Sequence[Sequence[int]] | None = None) -> Beams:
    """`constrained_beam` over any number of prompts, `batch` prompts per forward, in the order given.

    Prompts of one batch are of similar length (sorted by length, prefixes grouped by theirs), so
    the forward spends little on padding; the beams of a prompt do not depend on its batch-mates."""
    if not prompts:
        raise ValueError("no prompts to rank")
    prefixes = [()] * len(prompts) if prefixes is None else [tuple(p) for p in prefixes]
    order = sorted(range(len(prompts)), key=lambda i: (len(prefixes[i]), len(prompts[i])))
    parts = []
    start = 0
    while start < len(order):
        end = min(start + batch, len(order))
        same = [i for i in order[start:end] if len(prefixes[i]) == len(prefixes[order[start]])]
        end = start + len(same)
        parts.append(constrained_beam(model, [prompts[i] for i in same], trie, width, pad_id, device, amp_dtype,
                                      [prefixes[i] for i in same]))
        start = end
    back = torch.empty(len(order), dtype=torch.long)
    back[torch.tensor(order)] = torch.arange(len(order))
    return Beams.cat(parts).take(back)
