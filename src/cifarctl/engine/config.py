"""Training settings as one dataclass of plain values (stored in config.json and checkpoints)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("none", "step", "cosine", "onecycle")
DEFAULT_LR = {"adam": 1e-3, "sgd": 0.05}


@dataclass
class TrainConfig:
    """Everything that defines a run. Defaults are the course's: Adam, lr 1e-3, batch 100, CE loss.

    Usage: ``TrainConfig(model="resnet50", epochs=1, device="cpu")``
    """

    model: str
    epochs: int = 1
    batch_size: int = 100
    lr: float | None = None          # peak learning rate; None: 1e-3 for Adam (the course's), 0.05 for SGD
    optimizer: str = "adam"
    momentum: float = 0.9            # SGD only
    nesterov: bool = False           # SGD only
    weight_decay: float = 0.0        # L2 penalty as the optimizer defines it (Adam: coupled)
    lr_schedule: str = "none"
    warmup_epochs: float = 0.0       # linear warmup from 0, in epochs (fractions allowed)
    label_smoothing: float = 0.0
    max_steps: int | None = None     # stop after this many optimizer steps in total
    seed: int = 0
    device: str = "auto"
    eval: bool = True
    data: str = "cifar10"            # "cifar10" or "fake"
    init_ckpt: str | None = None     # start from these weights (cifarctl or raw course state_dict)
    save_every: int | None = None    # optimizer steps between checkpoints; None: every 3 minutes
    log_every: int = 50              # optimizer steps between metrics.jsonl step records
    amp: bool = True                 # mixed precision: CUDA bf16 (else fp16); CPU bf16 where native
    channels_last: bool | None = None  # None: on for CUDA and CPU bf16, off for CPU fp32
    compile: bool = False            # torch.compile the model
    sync_bn: bool = False            # under DDP: BatchNorm statistics over the global batch (SyncBatchNorm)
    eval_batch_size: int = 500

    def __post_init__(self) -> None:
        from cifarctl.errors import UsageError

        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"unknown optimizer {self.optimizer!r}: choose {' or '.join(OPTIMIZERS)}")
        if self.lr_schedule not in SCHEDULES:
            raise UsageError(f"unknown lr schedule {self.lr_schedule!r}: choose one of {', '.join(SCHEDULES)}")
        for name in ("epochs", "batch_size", "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name.replace('_', '-')} must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise UsageError("--max-steps must be at least 1")
        if self.save_every is not None and self.save_every < 1:
            raise UsageError("--save-every must be at least 1")
        if self.lr is None:
            self.lr = DEFAULT_LR[self.optimizer]
        if self.lr <= 0:
            raise UsageError("--lr must be positive")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UsageError("--label-smoothing must be in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
