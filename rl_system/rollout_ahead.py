"""Rollout ahead of the learner (`rl.max_staleness` N): batches are generated on a thread of the
driver while the learner trains, as in verl's one-step-off and AReaL's bounded-staleness modes.

The batch for step k is generated from the weights of version k - 1 - N (or those the run started
from, early on): the thread starts it once the workers hold them, and the loop holds back the push of
version k - N until it is done. When step k trains it, on the learner's version k - 1, every
completion is N versions old (TIS, `rl.tis_cap`, corrects the loss for it) and at most N batches
wait. N = 0 generates each batch when the step asks for it: the synchronous loop. What a batch was
drawn and filled with travels with it (`Produced`): by the time it is trained the sampler and the
data cursor have moved on.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from rl_system.dynamic_sampling import FillResult

CLOSE_TIMEOUT_S = 600  # the batch in flight finishes before the thread ends


@dataclass
class Produced:
    filled: FillResult  # the groups kept for training, and what was dropped
    groups: list  # every group scored for this batch (kept or dropped)
    seconds: dict[str, float]  # rollout and reward time spent producing it
    data_state: dict  # the prompt cursor right after it (a checkpoint taken after training it resumes here)
    epochs_drawn: float


def staleness(groups: list, learner_version: int) -> np.ndarray:
    """Per completion of `groups`, how many weight versions the learner is ahead of the weights that
    generated it (0: on-policy)."""
    return np.array([learner_version - g.rollout.weight_version for g in groups for _ in g.rollout.completions])


class RolloutAhead:
    def __init__(self, produce: Callable[[], Produced], max_staleness: int, version: int):
        """`version`: the weights the workers hold now (the step the run starts after)."""
        self.produce, self.n = produce, max_staleness
        self.version = version
        self.started = self.finished = version  # the last step whose batch started / finished generating
        self._cond = threading.Condition()
        self._ready: deque[Produced | BaseException] = deque()
        self._closed = self._failed = False
        self._thread = None
        if max_staleness:
            self._thread = threading.Thread(target=self._run, name="rollout-ahead", daemon=True)
            self._thread.start()

    def _may_start(self) -> bool:
        step = self.started + 1
        return self._closed or (self.version >= step - 1 - self.n and len(self._ready) < self.n)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(self._may_start)
                if self._closed:
                    return
                self.started += 1
            try:
                item: Produced | BaseException = self.produce()
            except BaseException as exc:  # handed to the loop, which raises it as its own
                item = exc
            with self._cond:
                self._ready.append(item)
                self.finished += 1
                self._failed = isinstance(item, BaseException)
                self._cond.notify_all()
            if self._failed:
                return

    def take(self) -> Produced:
        """The next step's batch: made now (N = 0) or the oldest one waiting (blocks until one is)."""
        if not self.n:
            return self.produce()
        with self._cond:
            self._cond.wait_for(lambda: self._ready)
            item = self._ready.popleft()
            self._cond.notify_all()
        if isinstance(item, BaseException):
            raise item
        return item

    def before_push(self, version: int) -> None:
        """Wait until the batch that must come from the weights before `version` (step version + N)
        has been generated, so every batch is exactly N versions behind the learner, whatever the
        timing: runs repeat. The loop skips it after the last step, whose next batch nobody trains."""
        if not self.n:
            return
        with self._cond:
            self._cond.wait_for(lambda: self._closed or self._failed or self.finished >= version + self.n)

    def pushed(self, version: int) -> None:
        """The workers now hold `version`: the batch waiting for it may start."""
        with self._cond:
            self.version = version
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(CLOSE_TIMEOUT_S)
