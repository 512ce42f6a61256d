"""Training: the loop, its schedules and optimizers (Muon, Lookahead), the time budget, and torchrun.

``train`` and ``resume`` (``training.api``) run one training run; ``Trainer`` (``training.trainer``)
is the loop itself. The run's files are ``cifarctl.run``'s; evaluation is ``cifarctl.evaluation``.
"""

from cifarctl.training.api import RunRequest, RunStart, request_run, resume, train
from cifarctl.training.result import TrainingInterrupted, TrainResult
from cifarctl.training.trainer import Trainer

__all__ = ["RunRequest", "RunStart", "request_run", "TrainResult", "Trainer", "TrainingInterrupted", "resume", "train"]
