"""Prompt templates for the SFT tasks, rendered with the backbone's chat template.

Prompts are kept short on purpose: a history is written as bare SID tokens (the level prefix makes
item boundaries unambiguous, so no separators), which keeps a 20-item seqrec prompt under about
100 tokens and makes a tiny backbone cheap to train; or, for a model trained with
`sft.history_input: item`, one `<item_N>` token per item, read from the model's own vocabulary
(`HistoryWriter.for_model`) so that evaluation, RL and serving write what the model learnt. RL and
evaluation call `render_seqrec_prompt`, which uses the first seqrec template, so they see exactly the prompt
family the model was trained on.

Bare prompts (`sft.prompt: bare`): SFT gives the tokenizer BARE_CHAT_TEMPLATE, which writes one
end-of-turn token and then the messages' text, and a seqrec instruction is the history alone; the
answer SID follows the last history item as every history item follows its predecessor. The template
is saved with the model, so `uses_bare_prompts` tells every later reader how the model was trained.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from indexing.sid import SidIndex

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

# The leading end-of-turn token gives the first history item a position that predicts it, as the
# chat template's header does; an assistant turn ends with the end-of-turn token.
BARE_CHAT_TEMPLATE = ("{{ eos_token }}{% for message in messages %}{{ message['content'] }}"
                      "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}")
TITLE_SEPARATOR = "; "
ITEM_TOKEN = "<item_{}>"


def item_token(item: int) -> str:
    return ITEM_TOKEN.format(item)


@dataclass(frozen=True)
class HistoryWriter:
    """How a prompt writes a history item (and a retrieved one): its SID (`index.text`), or its own
    item token. Answers are SIDs either way."""

    index: SidIndex
    item_tokens: bool = False

    @classmethod
    def for_model(cls, tokenizer, index) -> "HistoryWriter":
        """Item tokens when the tokenizer holds the first item's: SFT adds all or none (sft/backbone.py).
        One token looked up, not the vocabulary copied (get_vocab): serving asks on every request."""
        items = index.items()
        found = tokenizer.convert_tokens_to_ids(item_token(items[0])) if items else None
        return cls(index, found is not None and found != tokenizer.unk_token_id)

    def text(self, item: int) -> str:
        return item_token(item) if self.item_tokens else self.index.text(item)

    def history(self, items: Sequence[int]) -> list[str]:
        return [self.text(int(i)) for i in items]


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


def use_bare_prompts(tokenizer) -> None:
    tokenizer.chat_template = BARE_CHAT_TEMPLATE


def uses_bare_prompts(tokenizer) -> bool:
    """Whether the tokenizer's model was trained on bare prompts (sft.prompt: bare)."""
    return getattr(tokenizer, "chat_template", None) == BARE_CHAT_TEMPLATE


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
                       related_sid_strings: Sequence[str] = (), bare: bool = False) -> str:
    if bare:
        if reasoning or related_sid_strings:
            raise ValueError("a model trained on bare prompts (sft.prompt: bare) reads the history alone: no reasoning "
                             "instruction (rl.mode / eval.modes direct) and no retrieved items (sft.retrieved_items: 0)")
        return sid_history(history_sid_strings)
    text = TEMPLATES["seqrec"][template].format(history=sid_history(history_sid_strings))
    if related_sid_strings:
        text += RELATED_LINE.format(related=sid_history(related_sid_strings))
    return text + REASONING_INSTRUCTION if reasoning else text


def related_sids(writer: HistoryWriter, related: np.ndarray | None, history: Sequence[int]) -> list[str]:
    """The items most similar to the history's last item (`related` [items, k], from sft.related), as
    `writer` writes history items; none without a table or a history."""
    if related is None or not history:
        return []
    return writer.history(related[history[-1]])


def render_seqrec_prompt(tokenizer, history_sid_strings, reasoning: bool = False,
                         related_sid_strings: Sequence[str] = ()) -> str:
    """The canonical next-item prompt used by RL rollouts and evaluation.

    Direct mode: the model answers with the SID alone. Reasoning mode: the prompt asks for
    `<think>...</think><answer>SID</answer>`.
    """
    instruction = seqrec_instruction(history_sid_strings, 0, reasoning, related_sid_strings, uses_bare_prompts(tokenizer))
    return render_prompt(tokenizer, instruction)


@dataclass(frozen=True)
class EvalPrompts:
    prompt_ids: list[list[int]]
    targets: list[int]


def build_prompts(tokenizer, index, examples: Sequence, reasoning: bool, related: np.ndarray | None = None) -> EvalPrompts:
    """Token ids of the next-item prompt of each example (indexing.dataset.Example) and its target
    item, with histories written as the model reads them (`HistoryWriter.for_model`, over `index`, an
    indexing.sid.SidIndex), and with `related` the last item's most similar items."""
    writer = HistoryWriter.for_model(tokenizer, index)
    texts = [render_seqrec_prompt(tokenizer, writer.history(ex.history), reasoning,
                                  related_sids(writer, related, ex.history)) for ex in examples]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return EvalPrompts([list(x) for x in ids], [ex.target for ex in examples])


def reasoning_answer(rationale: str, sid: str) -> str:
    return f"<think>{rationale}</think><answer>{sid}</answer>"
