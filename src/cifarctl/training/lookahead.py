"""airbench's lookahead: an exponential moving average of the weights that the model is pulled back to.

Every ``EVERY`` steps the average moves toward the current weights, and the weights are then set to
the average. The average's decay grows with the cube of the run's progress, so early training moves
freely and the end of the run is smoothed; the last update copies the average into the model. The
paper credits it with about as much as a few more epochs would give. Its state is in the checkpoint,
so a resumed run continues bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

EVERY = 5               # optimizer steps between updates
DECAY = 0.95**EVERY     # the decay per update at the end of the run: 0.95 per step


class Lookahead:
    """Usage: ``ema = Lookahead(model)``; after each step ``ema.step(model, step, total_steps)``."""

    def __init__(self, model: nn.Module) -> None:
        self.average = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @staticmethod
    def decay(step: int, total_steps: int) -> float:
        return DECAY * (min(step, total_steps) / total_steps) ** 3

    @torch.no_grad()
    def step(self, model: nn.Module, step: int, total_steps: int) -> None:
        """After optimizer step ``step`` (1-based): update every ``EVERY`` steps, and at the last."""
        if step == total_steps:
            self._pull(model, decay=1.0)          # the final weights are the average
        elif step % EVERY == 0:
            self._pull(model, decay=self.decay(step, total_steps))

    def _pull(self, model: nn.Module, decay: float) -> None:
        current = model.state_dict()
        for key, average in self.average.items():
            average.lerp_(current[key], 1 - decay)
            current[key].copy_(average)

    def state_dict(self) -> dict[str, Any]:
        return {"average": self.average}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state["average"].items():
            self.average[key].copy_(value)
