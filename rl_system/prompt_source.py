"""The RL data cursor: training prompts in a seeded order, resumable to the exact position.

The order depends only on the seed and the epoch, never on how many rollout workers share the
work, so a resumed run (with any pool size) draws the prompts the uninterrupted run would have.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from cluster.spec import JobSpec, SpecError
from indexing.dataset import Example, reserve_latest
from indexing.sid import SidIndex
from rl_system.messages import Prompt
from sft.prompts import HistoryWriter, related_sids, render_seqrec_prompt


def training_prompts(spec: JobSpec, examples: Sequence[Example]) -> list[Example]:
    """The examples RL draws its prompts from: those of the `rl.train_users` lowest user ids (all
    when None), only the ones SFT left out when `sft.reserve_for_rl` is set. Refused when one step
    needs more than there are: the step would hold a prompt twice and its groups would weigh that
    prompt double, without a word."""
    rl = spec.rl
    if spec.sft.reserve_for_rl:
        examples = reserve_latest(list(examples), spec.sft.reserve_for_rl)[1]
    users = sorted({e.user for e in examples})[:rl.train_users]
    keep = set(users)
    out = [e for e in examples if e.user in keep]
    if rl.prompts_per_step > len(out):
        reserved = f", sft.reserve_for_rl={spec.sft.reserve_for_rl}" if spec.sft.reserve_for_rl else ""
        raise SpecError(f"{spec.source or 'spec'}: key 'rl.prompts_per_step': {rl.prompts_per_step} prompts per step, "
                        f"but the {len(users)} users available (rl.train_users={rl.train_users}{reserved}) give "
                        f"{len(out)} training prompts; expected at most {len(out)}, or more rl.train_users")
    return out


class PromptSource:
    def __init__(self, examples: Sequence[Example], index: SidIndex, tokenizer, seed: int, reasoning: bool = False,
                 related: np.ndarray | None = None):
        if not examples:
            raise ValueError("PromptSource needs at least one training example")
        self.examples = list(examples)
        self.index = index
        self.writer = HistoryWriter.for_model(tokenizer, index)
        self.tokenizer = tokenizer
        self.seed = seed
        self.reasoning = reasoning
        self.related = related  # sft.related, as the SFT prompts had it
        self.cursor = 0  # prompts drawn so far
        self._order_epoch = -1
        self._order: np.ndarray | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._order_epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))
            self._order_epoch = epoch
        return self._order

    def render(self, uid: int, example: Example) -> Prompt:
        text = render_seqrec_prompt(self.tokenizer, self.writer.history(example.history), self.reasoning,
                                    related_sids(self.writer, self.related, example.history))
        target_ids = tuple(self.tokenizer.convert_tokens_to_ids(self.index.tokens(example.target)))
        return Prompt(uid, example.user, text, example.target, self.index.codes(example.target),
                      tuple(example.history), target_ids)

    def next(self, n: int) -> list[Prompt]:
        out = []
        for uid in range(self.cursor, self.cursor + n):
            epoch, offset = divmod(uid, len(self.examples))
            out.append(self.render(uid, self.examples[int(self._permutation(epoch)[offset])]))
        self.cursor += n
        return out

    @property
    def epochs_drawn(self) -> float:
        return self.cursor / len(self.examples)

    def state(self) -> dict:
        return {"cursor": self.cursor, "seed": self.seed, "num_examples": len(self.examples)}

    def restore(self, state: dict) -> None:
        if state["seed"] != self.seed or state["num_examples"] != len(self.examples):
            raise ValueError(f"checkpointed data cursor (seed {state['seed']}, {state['num_examples']} examples) "
                             f"does not match this run (seed {self.seed}, {len(self.examples)} examples)")
        self.cursor = int(state["cursor"])
