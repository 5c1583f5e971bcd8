"""rl_system/rollout_ahead.py with a producer that records the weights each batch was made from:
the version lag is exactly N, at most N batches wait, a producer error reaches the loop."""
from __future__ import annotations

import threading
import time

import pytest

from rl_system.rollout_ahead import Produced, RolloutAhead


def loop(n: int, steps: int, train_s: float = 0.01, start: int = 0) -> tuple[list[int], int]:
    """The driver's order of calls; returns the weight version each trained batch came from and the
    most batches ever waiting."""
    versions, waiting = {"now": start}, [0]
    ahead: RolloutAhead

    def produce() -> Produced:
        time.sleep(0.005)
        waiting[0] = max(waiting[0], len(ahead._ready))
        return Produced(None, [], {}, {}, versions["now"])  # epochs_drawn carries the version here

    ahead = RolloutAhead(produce, n, version=start)
    seen = []
    for step in range(start + 1, start + steps + 1):
        batch = ahead.take()
        seen.append(int(batch.epochs_drawn))
        time.sleep(train_s)  # train
        if step < start + steps:
            ahead.before_push(step)
        versions["now"] = step  # push
        ahead.pushed(step)
    ahead.close()
    return seen, waiting[0]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_every_batch_is_exactly_n_versions_behind(n):
    seen, waiting = loop(n, steps=8)
    # Step k trains on the learner's version k - 1 a batch made from version max(0, k - 1 - n).
    assert seen == [max(0, k - 1 - n) for k in range(1, 9)]
    assert waiting <= n


def test_synchronous_makes_each_batch_when_asked():
    assert loop(0, steps=4)[0] == [0, 1, 2, 3]
    assert loop(0, steps=2, start=5)[0] == [5, 6]


def test_a_resumed_run_starts_from_its_checkpoint():
    assert loop(1, steps=3, start=4)[0] == [4, 4, 5]


def test_a_producer_error_reaches_the_loop_and_close_returns():
    calls = []

    def produce():
        calls.append(threading.current_thread().name)
        raise RuntimeError("worker lost")

    ahead = RolloutAhead(produce, 1, version=0)
    with pytest.raises(RuntimeError, match="worker lost"):
        ahead.take()
    ahead.before_push(1)  # does not wait for a batch that will never come
    ahead.close()
    assert calls == ["rollout-ahead"]
