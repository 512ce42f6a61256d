"""The Python API in one import: ``train``, ``resume``, ``evaluate``, ``TrainConfig`` and checkpoint helpers.

The code lives in ``cifarctl.training`` (the loop), ``cifarctl.run`` (the run's files),
``cifarctl.evaluation`` and ``cifarctl.serving``; docs/architecture.md maps them.
"""

from cifarctl.device import resolve_device
from cifarctl.evaluation import EvalResult, evaluate, evaluate_model
from cifarctl.run.checkpoint import find_latest, load_checkpoint, load_weights, save_checkpoint
from cifarctl.run.config import TrainConfig
from cifarctl.training import TrainingInterrupted, TrainResult, resume, train

__all__ = [
    "EvalResult", "TrainConfig", "TrainResult", "TrainingInterrupted", "evaluate", "evaluate_model",
    "find_latest", "load_checkpoint", "load_weights", "resolve_device", "resume", "save_checkpoint", "train",
]
