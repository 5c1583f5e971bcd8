"""A rollout pool's `beam` and `generate` in this process, with torch: the evaluation backend
`eval.backend: torch` (the default on CPUs, cluster.device.eval_backend).

On a CPU, a vLLM engine costs a fixed half millisecond or so per request, and a trie-constrained
beam issues a request per live beam and SID level; the model of a generative recommender is small
enough that its whole forward costs less. Here each prompt is prefilled once in a batch of prompts
of similar length and its beams continue on a copied key/value cache (sft.hf_beam), the search that
SFT validation runs, so `gream eval`, `gream serve` and RL's validation rank exactly as it does.

`generate` samples direct-mode SIDs (Pass@K) here too. Free-text generation (reasoning mode's
thoughts) is what vLLM is for: those calls go to a rollout pool started on first use, so a direct
evaluation never starts an engine.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Sequence

import torch

from indexing.sid import SidIndex
from indexing.trie import SidTrie
from rl_system.messages import BeamCandidate, Completion, RolloutGroup
from sft.hf_beam import BATCH, beam_search, left_pad

SAMPLE_SEED = 0  # a direct-mode sampling call draws the same completions every time


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Logits [B, V] with the tokens outside each row's nucleus set to -inf: the smallest set of most
    likely tokens whose probability reaches `top_p` (the most likely token always stays)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    before = probs.cumsum(-1) - probs  # mass of the tokens ranked above each one
    drop_sorted = before >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


class TorchAnswerer:
    """`beam` and `generate` of rl_system.rollout.pool.RolloutPool for one model folder."""

    num_workers = 1

    def __init__(self, model_dir: str | Path, index: SidIndex, device: torch.device, dtype: str = "float32",
                 engine: Callable[[], object] | None = None):
        """`engine`: starts the rollout pool that reasoning-mode generation needs (None: refused)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device).eval()
        vocab_size = self.model.get_output_embeddings().weight.shape[0]
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id
        self.trie = SidTrie.from_index(index, self.tokenizer.get_vocab(), vocab_size, [self.eos_id], device)
        self._engine_factory, self._engine = engine, None
        self._lock = threading.Lock()  # gream serve answers from several threads; one forward at a time

    def beam(self, prompts: Sequence[Sequence[int]], width: int,
             prefixes: Sequence[Sequence[int]] | None = None) -> list[list[BeamCandidate]]:
        """Top-`width` distinct SIDs per prompt (token ids), best first; with `prefixes`, the SIDs
        under each prompt's given first tokens."""
        if not prompts:
            return []
        with self._lock:
            beams = beam_search(self.model, prompts, self.trie, width, self.pad_id, self.device, prefixes=prefixes)
        out = []
        for rows, tokens, logprobs in zip(beams.rows.tolist(), beams.tokens.tolist(), beams.token_logprobs.tolist()):
            out.append([BeamCandidate(tuple(t), tuple(lp)) for r, t, lp in zip(rows, tokens, logprobs) if r >= 0])
        return out

    def generate(self, prompts: Sequence[Sequence[int]], n: int, temperature: float, max_tokens: int,
                 mode: str | None, top_p: float = 1.0, seeds: Sequence[int] | None = None) -> list[RolloutGroup]:
        if mode != "direct":
            if self._engine_factory is None:
                raise ValueError(f"mode {mode!r} generates free text: it needs a vLLM engine (eval.backend: vllm)")
            if self._engine is None:
                self._engine = self._engine_factory()
            return self._engine.generate(prompts, n=n, temperature=temperature, max_tokens=max_tokens, mode=mode,
                                         top_p=top_p, seeds=seeds)
        if seeds is not None:
            raise ValueError("per-prompt seeds are the vLLM engine's; the torch backend draws from one fixed stream")
        with self._lock:
            return [g for start in range(0, len(prompts), BATCH)
                    for g in self._sample(prompts[start:start + BATCH], n, temperature, top_p, max_tokens)]

    @torch.no_grad()
    def _sample(self, prompts: Sequence[Sequence[int]], n: int, temperature: float, top_p: float,
                max_tokens: int) -> list[RolloutGroup]:
        """`n` trie-constrained SIDs per prompt, each token drawn from the temperature-scaled,
        nucleus-filtered distribution over the tokens the trie allows, then the end token."""
        generator = torch.Generator(self.device).manual_seed(SAMPLE_SEED)
        ids, mask, positions = (t.to(self.device) for t in left_pad(prompts, self.pad_id))
        rows = len(prompts) * n
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        cache.reorder_cache(torch.arange(len(prompts), device=self.device).repeat_interleave(n))
        logits = out.logits[:, -1].repeat_interleave(n, 0)
        mask, position = mask.repeat_interleave(n, 0), positions[:, -1:].repeat_interleave(n, 0)
        states = self.trie.root(rows)
        tokens, logprobs = [], []
        for level in range(min(self.trie.depth, max_tokens)):
            scaled = self.trie.apply(logits.float(), states) / temperature
            token = torch.multinomial(top_p_filter(scaled, top_p).softmax(-1), 1, generator=generator)[:, 0]
            tokens.append(token)
            logprobs.append(scaled.log_softmax(-1).gather(1, token[:, None])[:, 0])
            states = self.trie.advance(states, token)
            if level + 1 < min(self.trie.depth, max_tokens):
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                position = position + 1
                out = self.model(input_ids=token[:, None], attention_mask=mask, position_ids=position,
                                 past_key_values=cache, use_cache=True)
                logits, cache = out.logits[:, -1], out.past_key_values
        sids = torch.stack(tokens, 1).tolist()
        lps = torch.stack(logprobs, 1).tolist()
        ends = len(sids[0]) < max_tokens  # room for the end token after a whole SID
        groups = []
        for p, prompt in enumerate(prompts):
            completions = []
            for r in range(p * n, (p + 1) * n):
                text = self.tokenizer.decode(sids[r], skip_special_tokens=True)
                completions.append(Completion(sids[r] + [self.eos_id] * ends, text, lps[r] + [0.0] * ends,
                                              "stop" if ends else "length"))
            groups.append(RolloutGroup(list(prompt), completions, 0))
        return groups

    def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None


def answerer_from_spec(spec, model_dir: str | Path, index: SidIndex):
    """The spec's evaluation backend on `model_dir`: a TorchAnswerer or a RolloutPool (both have
    `beam`, `generate`, `num_workers` and `shutdown`)."""
    from cluster import device as device_mod
    from rl_system.rollout.pool import RolloutPool

    placement = device_mod.resolve(spec.cluster.device)
    if device_mod.eval_backend(spec.eval.backend, placement) == "vllm":
        return RolloutPool.from_spec(spec, model_dir, index)
    return TorchAnswerer(model_dir, index, placement.torch_device(), spec.model.dtype,
                         engine=lambda: RolloutPool.from_spec(spec, model_dir, index))
