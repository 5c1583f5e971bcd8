"""Per-request sampling seeds: what makes an RL run repeat itself, and a resumed run the uninterrupted one.

Every prompt the data cursor hands out has a uid, its position in the cursor's stream: unique across
epochs and dynamic-sampling rounds, and restored on resume. A group's seed is a function of
(rl.seed, uid) alone, and vLLM gives sample i of the group seed + i. The draws then depend neither on
how requests are batched, sharded over workers or scheduled inside the engine, nor on what the engine
generated before. An engine seeded once at start offers none of that: a restarted engine begins its
stream again, and two runs' requests reach the engine core in different interleavings.
"""
from __future__ import annotations

import hashlib

SAMPLE_SPACING = 1 << 16  # a group's samples take base + i; the next base is at least this far away


def request_seed(seed: int, uid: int) -> int:
    """The base seed of prompt draw `uid`'s group: a multiple of SAMPLE_SPACING below 2**63."""
    digest = hashlib.blake2b(f"{seed}:{uid}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 17) * SAMPLE_SPACING
