"""What a training run returns, and how it ends when asked to stop."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifarctl.errors import CifarctlError


class TrainingInterrupted(CifarctlError):
    """Training stopped on request after saving; ``run_dir`` resumes it."""

    exit_code = 130

    def __init__(self, run_dir: Path, global_step: int) -> None:
        super().__init__(f"stopped at step {global_step}; the checkpoint is in {run_dir}")
        self.run_dir, self.global_step = run_dir, global_step


@dataclass
class TrainResult:
    """What a run achieved; accuracies in percent (test ones are None with ``eval=False``)."""

    run_dir: Path
    model: str
    epochs_completed: int
    global_step: int
    train_loss: float
    train_accuracy: float
    test_accuracy: float | None
    test_loss: float | None
    seconds: float                   # wall time of the run, evaluation included
    images_per_s: float              # training throughput (evaluation excluded)
    device: str
    val_accuracy: float | None = None     # last validation accuracy (with --val-split)
    best_test_accuracy: float | None = None  # best.pt on the test set (with --val-split)
    best_selected_on: str = "test"   # which split chose best.pt
    tta: int | str = 0               # test-time augmentation level of the test numbers (0-2, or "selective")
    finished_before: bool = False    # a resumed run that had nothing left to do
    budget: dict[str, Any] | None = None  # the time-budget plan (BudgetPlan.to_dict()), with --time-budget
    epochs_trained: float = 0.0      # optimizer steps over steps per epoch (a partial last epoch counts its share)
    total_seconds: float = 0.0       # the run's time over every session it was trained in (``seconds``: this one)
