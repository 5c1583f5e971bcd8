"""Per-request seeds and the samples digest: pure functions, checked by hand."""
import hashlib

import numpy as np

from rl_system.groups import samples_digest
from rl_system.messages import Completion, Prompt, RolloutGroup, ScoredGroup
from rl_system.seeding import SAMPLE_SPACING, request_seed


def test_request_seed_is_the_hash_of_seed_and_uid_on_a_spaced_grid():
    digest = hashlib.blake2b(b"3:41", digest_size=8).digest()
    assert request_seed(3, 41) == (int.from_bytes(digest, "big") >> 17) << 16
    assert request_seed(3, 41) == request_seed(3, 41)


def test_request_seeds_leave_room_for_every_sample_and_fit_a_signed_64_bit_seed():
    bases = sorted(request_seed(s, uid) for s in range(3) for uid in range(5000))
    assert all(b % SAMPLE_SPACING == 0 and 0 <= b < 2**63 for b in bases)
    # Base + sample index never reaches another group's base.
    assert all(later - earlier >= SAMPLE_SPACING for earlier, later in zip(bases, bases[1:]))


def _group(prompt, completions):
    rollout = RolloutGroup(prompt, [Completion(c, "", [0.0] * len(c), "stop") for c in completions], 0)
    n = len(completions)
    return ScoredGroup(Prompt(0, 0, "", 0, ()), rollout, np.zeros(n), np.zeros(n), np.zeros(n, int), np.ones(n))


def test_samples_digest_changes_with_any_token_and_with_group_boundaries():
    a = [_group([1, 2], [[5, 6], [7]])]
    assert samples_digest(a) == samples_digest([_group([1, 2], [[5, 6], [7]])])
    assert samples_digest(a) != samples_digest([_group([1, 2], [[5, 6], [8]])])
    assert samples_digest(a) != samples_digest([_group([1, 2], [[5], [6, 7]])])
    assert samples_digest(a) != samples_digest([_group([1], [[2, 5, 6], [7]])])
