"""One optimizer step on a batch, as every run takes it (and as a time budget's probe times it).

Forward and backward run chunk by chunk under ``--micro-batch``: each chunk's mean loss weighted by
its share, so the chunks' gradients add up to the whole batch's mean; under DDP only the last chunk
exchanges gradients. Then one optimizer step (through the grad scaler in fp16).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cifarctl.training.metrics import RunningMetrics


def chunk_bounds(n: int, micro_batch: int | None) -> list[tuple[int, int]]:
    """``(start, stop)`` of each chunk of a batch of ``n``: as few as ``micro_batch`` allows, of equal sizes."""
    count = -(-n // micro_batch) if micro_batch else 1
    bounds = [n * i // count for i in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


@dataclass
class StepRunner:
    """Usage: ``step = StepRunner(model, optimizer, None, "cpu", None, 0.2, 1000)``; ``step(x, y)``."""

    forward: nn.Module                      # the model as the step calls it (DDP- or compile-wrapped)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None     # fp16 only
    device_type: str
    cast: torch.dtype | None                # the autocast dtype; None: fp32
    label_smoothing: float
    micro_batch: int | None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, running: RunningMetrics | None = None) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        chunks = chunk_bounds(len(y), self.micro_batch)
        for i, (start, stop) in enumerate(chunks):
            xc, yc = (x, y) if len(chunks) == 1 else (x[start:stop], y[start:stop])
            with self._no_sync(i < len(chunks) - 1):
                with torch.autocast(self.device_type, dtype=self.cast or torch.float32, enabled=self.cast is not None):
                    logits = self.forward(xc)
                    loss = F.cross_entropy(logits.float(), yc, label_smoothing=self.label_smoothing)
                # a chunk's mean loss, weighted by its share: the chunks' gradients add up to the batch mean's
                scaled = loss if len(chunks) == 1 else loss * ((stop - start) / len(y))
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            if running is not None:
                running.update(loss, logits, yc)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

    def _no_sync(self, skip: bool) -> contextlib.AbstractContextManager:
        """Under DDP, a chunk before the batch's last keeps its gradients on this rank (no all-reduce yet)."""
        no_sync = getattr(self.forward, "no_sync", None)
        return no_sync() if skip and no_sync is not None else contextlib.nullcontext()
