"""Loss and accuracy summed on the device as training goes; read back once per logging interval."""

from __future__ import annotations

from typing import Any

import torch

from cifarctl.distributed import all_reduce_sum


class RunningMetrics:
    """Sums of loss and correct predictions kept as device tensors (no host sync per step)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.correct = torch.zeros((), dtype=torch.int64, device=self.device)
        self.count = 0

    def update(self, loss_mean: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        n = labels.numel()
        self.loss_sum += loss_mean.detach().double() * n
        self.correct += (logits.detach().argmax(1) == labels).sum()
        self.count += n

    def totals(self) -> tuple[float, int, int]:
        """``(loss sum, correct, count)`` over all ranks; the only host synchronisation."""
        packed = torch.stack([self.loss_sum, self.correct.double(),
                              torch.tensor(float(self.count), dtype=torch.float64, device=self.device)])
        loss_sum, correct, count = all_reduce_sum(packed).tolist()
        return loss_sum, int(correct), int(count)

    def read(self) -> tuple[float, float]:
        """``(mean loss, accuracy in percent)`` over all ranks."""
        loss_sum, correct, count = self.totals()
        if not count:
            return float("nan"), float("nan")
        return loss_sum / count, 100.0 * correct / count

    def state_dict(self) -> dict[str, Any]:
        loss_sum, correct, count = self.totals()
        return {"loss_sum": loss_sum, "correct": correct, "count": count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss_sum.fill_(float(state["loss_sum"]))
        self.correct.fill_(int(state["correct"]))
        self.count = int(state["count"])
