"""What tests/chat_server.py answers when it stands in for the teacher of `gream teach`: replies built
from the prompt alone (no model), so the tests are fast and their expected counts are computable.

Reasoning prompts get a rationale that cites the first history item by SID and answers the target
(kept by the format check). Preference prompts get a summary naming the shopper's latest titles,
except one prompt in four (by a hash of the prompt), answered with the history copied back, which
the check drops as `copies_prompt`.
"""
from __future__ import annotations

import hashlib
import re

_SID = re.compile(r"(?:<[a-z]_\d+>)+")
_ANSWER = re.compile(r"<answer>(.*?)</answer>")


def is_copy(prompt: str) -> bool:
    """Whether `reply` answers this preference prompt with a copy of its history."""
    return int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 4 == 0


def reply(prompt: str) -> str:
    items = [line for line in prompt.splitlines() if _SID.match(line)]
    answers = _ANSWER.findall(prompt)
    if answers:  # a reasoning prompt: it ends by naming the answer it wants
        cited = _SID.match(items[0]).group(0)
        return (f"1. Behavioural evidence: the shopper bought {cited}.\n2. Latent preferences: practical supplies.\n"
                f"3. Intent: restocking.\n4. Recommendation: a related item.\n5. Denoised history: {cited}.\n"
                f"<answer>{answers[-1]}</answer>")
    if is_copy(prompt):
        return "\n".join(items[:4])
    titles = [line.split(" - ", 1)[1] for line in items if " - " in line][-2:] or ["office supplies"]
    named = " and ".join(" ".join(t.split()[:2]) for t in titles)
    return (f"This shopper keeps a well stocked desk, lately with {named}. They value practical things "
            "that last and will likely look for more of the same kind next.")
