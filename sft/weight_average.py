"""Exponential moving average of the trained weights (Polyak averaging), saved in place of the last
weights: many epochs over one small catalogue leave the last steps' weights noisy, and their
average generalises better than any one of them."""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch


class WeightAverage:
    def __init__(self, params: Iterable[torch.nn.Parameter], decay: float):
        self.params = list(params)
        # float32 whatever the weights: a 1 - 0.999 step is below bfloat16's resolution.
        self.shadow = [p.detach().float().clone() for p in self.params]
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        # The TensorFlow ramp: early averages must not be dominated by the initial weights.
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1.0 - decay)

    def state_dict(self) -> dict:
        return {"shadow": self.shadow, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.shadow, self.updates = list(state["shadow"]), state["updates"]

    @torch.no_grad()
    def copy_to(self) -> None:
        for shadow, p in zip(self.shadow, self.params):
            p.copy_(shadow)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The averaged weights in the model inside the block (to validate them), the trained ones after."""
        trained = [p.detach().clone() for p in self.params]
        self.copy_to()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, t in zip(self.params, trained):
                    p.copy_(t)
