"""Training and evaluation: ``train``, ``resume``, ``evaluate``, and checkpoint helpers."""

from cifarctl.engine.checkpoint import find_latest, load_checkpoint, load_weights, save_checkpoint
from cifarctl.engine.config import TrainConfig
from cifarctl.engine.device import resolve_device
from cifarctl.engine.evaluate import EvalResult, evaluate, evaluate_model
from cifarctl.engine.train import TrainingInterrupted, TrainResult, resume, train

__all__ = [
    "EvalResult", "TrainConfig", "TrainResult", "TrainingInterrupted", "evaluate", "evaluate_model",
    "find_latest", "load_checkpoint", "load_weights", "resolve_device", "resume", "save_checkpoint", "train",
]
