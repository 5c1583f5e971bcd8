"""Trie-constrained beam search over the SID positions with a Hugging Face causal LM, in torch: the
same ranking as the vLLM beam (rl_system/rollout/beam_search.py), for the model being trained (SFT
validation, RL's in-run validation on the learner) and for evaluation and serving on CPUs, where a
vLLM engine pays a fixed cost per request that dwarfs a small model's forward.

Scores are the sum over the SID tokens of log-probabilities normalised over the tokens the trie
allows at that position (vLLM's processed logprobs), so a beam ranks real items only. Every beam
follows the trie, and beams are distinct prefixes, so the results are distinct SIDs. A beam may
start under a given SID prefix (think-ahead): the prefix tokens run with the prompt and count 0 in
the score.

How it spends little (BENCHMARKS.md, "Constrained beam evaluation"): prompts are batched by length
(little left padding); each prompt is prefilled once, and its keys are never copied to the beams:
at each further SID level a prompt's W beams enter as W queries of one row, at one position, each
seeing the prompt, one slot of each earlier block of beam tokens (its ancestors) and itself (tree
attention through a 4D mask); a step computes the logits of its SID level's tokens only, where the
model allows it; and at the last level only the beams whose prefix has more than one child run the
model (a single child is a forced step at log-probability 0, as in the vLLM beam).

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

BATCH = 64  # prompts per forward (x width beams a step): 32 and 128 were slower on this 2-core machine


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


def _cache_of(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> Cache:
    """A plain cache holding the given (keys, values) per layer."""
    out = []
    for keys, values in layers:
        layer = DynamicLayer()
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
        out.append(layer)
    return Cache(layers=out)


def _tree_mask(prompt_mask: torch.Tensor, ancestors: torch.Tensor, width: int) -> torch.Tensor:
    """Which keys each of a prompt's `width` beams sees at a decoding step, bool [P, 1, W, L + (j+1)W]:
    the prompt's real tokens, in each of the j earlier blocks of beam tokens the slot of its own
    ancestor (`ancestors` [P, W, j]), and in the new block itself only."""
    p, length = prompt_mask.shape
    blocks = [torch.nn.functional.one_hot(ancestors[:, :, b], width).bool() for b in range(ancestors.shape[2])]
    own = torch.eye(width, dtype=torch.bool, device=prompt_mask.device).expand(p, width, width)
    return torch.cat([prompt_mask.bool()[:, None, :].expand(p, width, length), *blocks, own], dim=2)[:, None]


def _beam_rows_cache(cache: Cache, prompt_len: int, width: int, rows: torch.Tensor,
                     ancestors: torch.Tensor) -> Cache:
    """For some beams (`rows`, global beam ids), a cache of their own: their prompt's keys and their
    ancestors' (`ancestors` [rows, j] slots), gathered out of the shared tree cache."""
    blocks = ancestors.shape[1]
    cols = torch.cat([torch.arange(prompt_len, device=rows.device).expand(len(rows), prompt_len),
                      prompt_len + torch.arange(blocks, device=rows.device) * width + ancestors], dim=1)
    layers = []
    for layer in cache.layers:
        pick = cols[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])
        layers.append((layer.keys[rows // width].gather(2, pick), layer.values[rows // width].gather(2, pick)))
    return _cache_of(layers)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids, attention mask and position ids of left-padded prompts (positions count real tokens)."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long)
    return ids, mask, (mask.cumsum(1) - 1).clamp_min(0)


def head_split(model):
    """(decoder, output layer) when the logits are the output layer on the decoder's last hidden
    state and nothing more (Llama, Qwen, SmolLM2 ...), so a step can compute the logits of one SID
    level's tokens only; None otherwise (soft-capped or scaled logits, ZeRO-3-partitioned weights)."""
    head, cfg = model.get_output_embeddings(), model.config
    if (not isinstance(head, torch.nn.Linear) or head.weight.numel() == 0
            or getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None)):
        return None
    return model.get_decoder(), head


def _step(model, split, columns: torch.Tensor, vocab_size: int, queries: int = 1,
          **inputs) -> tuple[torch.Tensor, object]:
    """The logits of the last `queries` positions of each row, [B * queries, V] (the `columns`
    tokens' only, the rest -inf, when the model splits), and the cache."""
    if split is None:
        out = model(**inputs, use_cache=True, logits_to_keep=queries)
        return out.logits[:, -queries:].reshape(-1, out.logits.shape[-1]), out.past_key_values
    decoder, head = split
    out = decoder(**inputs, use_cache=True)
    hidden = out.last_hidden_state[:, -queries:].reshape(-1, out.last_hidden_state.shape[-1])
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
    split = head_split(model)
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
    if not all(type(layer) is DynamicLayer for layer in cache.layers):
        raise ValueError(f"the torch beam needs a plain key/value cache; {type(model).__name__} keeps another "
                         "kind (sliding or recurrent layers): evaluate it with eval.backend: vllm")
    # The prompt's keys are never copied to the beams: at each further SID level the W beams of a
    # prompt enter as W queries of one row, at one position, each seeing the prompt, its own
    # ancestors' tokens (one slot of each earlier block) and itself (`_tree_mask`).
    length = ids.shape[1]
    ancestors = torch.zeros(n, width, 0, dtype=torch.long, device=device)
    position = positions[:, -1:]
    for block, level in enumerate(range(k + 1, trie.depth)):
        last = level == trie.depth - 1
        alive = torch.isfinite(scores.reshape(-1))
        # The last SID token of a beam whose prefix has one child is that child at log-probability 0
        # (the vLLM beam's forced step), and a dead beam's is never read: only the other beams run
        # the model, each on its own gathered keys. Most last levels are nearly all forced.
        ask = (trie.num_children(states) != 1) & alive if last else None
        if ask is None or int(ask.sum()) * 2 > ask.numel():
            with autocast(device.type, amp_dtype):
                logits, cache = _step(model, split, columns[level], vocab_size, width,
                                      input_ids=history[:, -1].reshape(n, width),
                                      attention_mask=_tree_mask(mask, ancestors, width),
                                      position_ids=(position + 1 + block).expand(n, width), past_key_values=cache)
            top, next_tokens = trie.topk(_constrained_logprobs(logits, trie, states), states, width)
        else:
            top = torch.full((len(states), width), float("-inf"), device=device)
            top[:, 0] = torch.where(alive, 0.0, float("-inf"))
            next_tokens = torch.full_like(top, int(trie.end_token_ids[0]), dtype=torch.long)
            next_tokens[:, 0] = trie.first_child(states)
            rows = ask.nonzero().flatten()
            if rows.numel():
                own = ancestors.reshape(n * width, -1)[rows]
                row_mask = torch.cat([mask[rows // width], torch.ones(len(rows), block + 1, dtype=mask.dtype,
                                                                        device=device)], dim=1)
                with autocast(device.type, amp_dtype):
                    logits, _ = _step(model, split, columns[level], vocab_size, input_ids=history[rows, -1:],
                                      attention_mask=row_mask, position_ids=position[rows // width] + 1 + block,
                                      past_key_values=_beam_rows_cache(cache, length, width, rows, own))
                top[rows], next_tokens[rows] = trie.topk(_constrained_logprobs(logits, trie, states[rows]),
                                                         states[rows], width)
        candidates = (scores.reshape(-1, 1) + top).reshape(n, width * width)
        scores, pick = candidates.topk(width, dim=1)
        slot = pick // width  # each new beam's parent among its prompt's beams
        parents = (torch.arange(n, device=device)[:, None] * width + slot).reshape(-1)
        chosen = next_tokens.reshape(n, width * width).gather(1, pick).reshape(-1, 1)
        gained = top.reshape(n, width * width).gather(1, pick).reshape(-1, 1)
        history = torch.cat([history[parents], chosen], dim=1)
        steps = torch.cat([steps[parents], gained], dim=1)
        states = trie.advance(states[parents], chosen[:, 0])
        ancestors = torch.cat([ancestors.gather(1, slot[:, :, None].expand(-1, -1, block)), slot[:, :, None]], dim=2)
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
