"""Prompt templates for the SFT tasks, rendered with the backbone's chat template.

Prompts are kept short on purpose: a history is written as bare SID tokens (the level prefix makes
item boundaries unambiguous, so no separators), which keeps a 20-item seqrec prompt under about
100 tokens and makes a tiny backbone cheap to train. RL and evaluation call
`render_seqrec_prompt`, which uses the first seqrec template, so they see exactly the prompt
family the model was trained on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

REASONING_INSTRUCTION = "\nThink it through, then answer."
RELATED_LINE = "\nSimilar to the last: {related}"  # sft.retrieved_items

TEMPLATES: dict[str, tuple[str, ...]] = {
    "seqrec": (
        "Purchase history: {history}\nNext item?",
        "The user bought {history} in this order. Predict the next item.",
        "Items so far: {history}\nWhat does the user buy next?",
    ),
    "item2index": (
        "Item: {title}\nIts ID?",
        "Which ID does this item have? {title}",
        "Give the semantic ID of the product: {title}",
    ),
    "index2item": (
        "Item {sid}: title?",
        "What is the title of item {sid}?",
        "Name the product with ID {sid}.",
    ),
    "fusion_title": (
        "Purchase history: {history}\nTitle of the next item?",
        "The user bought {history}. Which product title comes next?",
        "Items so far: {history}\nName the next product.",
    ),
    "fusion_sid": (
        "The user bought: {titles}\nID of the next item?",
        "Purchase history by title: {titles}\nPredict the next item's ID.",
        "Products so far: {titles}\nWhich ID comes next?",
    ),
    "preference": (
        "Purchase history: {history}\nDescribe the user's preferences.",
        "The user bought {history}. What does this user like?",
        "Items so far: {history}\nSummarise the user's taste.",
    ),
}

TITLE_SEPARATOR = "; "


@dataclass(frozen=True)
class RenderedExample:
    """One training example as text: the prompt (ends with the assistant header) and the completion
    (the answer followed by the end-of-turn token), tokenised separately so the prompt's tokens are
    exactly what vLLM sees at inference time."""

    task: str
    prompt: str
    completion: str
    items: tuple[int, ...] = ()  # seqrec: the history then the target, what a teacher reads (sft/distill.py)


def template_corpus() -> list[str]:
    """Every template's fixed words, for training the embedded backbone's tokenizer."""
    texts = [t.format(history="", title="", sid="", titles="") for ts in TEMPLATES.values() for t in ts]
    return texts + [REASONING_INSTRUCTION, "user\n", "assistant\n", "system\n"]


def _messages(instruction: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": instruction}]


def render_prompt(tokenizer, instruction: str) -> str:
    return tokenizer.apply_chat_template(_messages(instruction), tokenize=False, add_generation_prompt=True)


def render_completion(tokenizer, instruction: str, answer: str) -> str:
    """The text the assistant writes after the prompt, up to and including the end-of-turn token."""
    prompt = render_prompt(tokenizer, instruction)
    full = tokenizer.apply_chat_template(
        _messages(instruction) + [{"role": "assistant", "content": answer}], tokenize=False)
    eos = tokenizer.eos_token
    if not full.startswith(prompt) or eos is None:
        raise ValueError(
            f"chat template of {tokenizer.name_or_path!r} does not render an assistant turn as a continuation "
            "of the generation prompt (or defines no eos token); SFT needs both")
    completion = full[len(prompt):]
    end = completion.find(eos, len(answer))
    if end < 0:
        raise ValueError(f"chat template of {tokenizer.name_or_path!r} does not close the assistant turn with {eos!r}")
    return completion[: end + len(eos)]


def sid_history(history_sid_strings: list[str] | tuple[str, ...]) -> str:
    return "".join(history_sid_strings)


def seqrec_instruction(history_sid_strings, template: int = 0, reasoning: bool = False,
                       related_sid_strings: Sequence[str] = ()) -> str:
    text = TEMPLATES["seqrec"][template].format(history=sid_history(history_sid_strings))
    if related_sid_strings:
        text += RELATED_LINE.format(related=sid_history(related_sid_strings))
    return text + REASONING_INSTRUCTION if reasoning else text


def related_sids(index, related: np.ndarray | None, history: Sequence[int]) -> list[str]:
    """SIDs of the items most similar to the history's last item (`related` [items, k], from
    sft.related), none without a table or a history."""
    if related is None or not history:
        return []
    return [index.text(int(i)) for i in related[history[-1]]]


def render_seqrec_prompt(tokenizer, history_sid_strings, reasoning: bool = False,
                         related_sid_strings: Sequence[str] = ()) -> str:
    """The canonical next-item prompt used by RL rollouts and evaluation.

    Direct mode: the model answers with the SID alone. Reasoning mode: the prompt asks for
    `<think>...</think><answer>SID</answer>`.
    """
    return render_prompt(tokenizer, seqrec_instruction(history_sid_strings, 0, reasoning, related_sid_strings))


@dataclass(frozen=True)
class EvalPrompts:
    prompt_ids: list[list[int]]
    targets: list[int]


def build_prompts(tokenizer, index, examples: Sequence, reasoning: bool, related: np.ndarray | None = None) -> EvalPrompts:
    """Token ids of the next-item prompt of each example (indexing.dataset.Example) and its target
    item, with histories written as the SIDs of `index` (indexing.sid.SidIndex), and with `related`
    the SIDs of the last item's most similar items."""
    texts = [render_seqrec_prompt(tokenizer, [index.text(i) for i in ex.history], reasoning,
                                  related_sids(index, related, ex.history)) for ex in examples]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return EvalPrompts([list(x) for x in ids], [ex.target for ex in examples])


def reasoning_answer(rationale: str, sid: str) -> str:
    return f"<think>{rationale}</think><answer>{sid}</answer>"
