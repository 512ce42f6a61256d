"""Training settings as one dataclass of plain values (stored in config.json and checkpoints).

``TrainConfig(model=...)`` has the course's recipe as its defaults. ``TrainConfig.for_model(name,
**overrides)`` starts from the model's own recipe in the registry instead, then applies
``overrides``: that is what ``cifarctl train MODEL`` does, and a flag changes one field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from cifarctl.data.loader import MEAN, STD

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("none", "step", "cosine", "onecycle", "triangle")
LR_UNITS = ("torch", "per1024")
FLIPS = ("random", "alternate", "none")
PAD_MODES = ("zeros", "reflect")
DEFAULT_LR = {"adam": 1e-3, "sgd": 0.05}


@dataclass
class TrainConfig:
    """Everything that defines a run. Defaults are the course's: Adam, lr 1e-3, batch 100, CE loss.

    Usage: ``TrainConfig(model="resnet50", epochs=1, device="cpu")``, or
    ``TrainConfig.for_model("airbench94", device="cpu")`` for the model's own recipe.
    """

    model: str
    epochs: int = 1
    batch_size: int = 100
    lr: float | None = None          # peak learning rate; None: 1e-3 for Adam (the course's), 0.05 for SGD
    optimizer: str = "adam"
    momentum: float = 0.9            # SGD only (the upper bound of onecycle's momentum cycle)
    nesterov: bool = False           # SGD only
    weight_decay: float = 0.0        # L2 penalty on weights as the optimizer defines it (Adam: coupled)
    norm_weight_decay: float = 0.0   # the same for norm-layer parameters and biases (torchvision's flag)
    norm_bias_lr_scale: float = 1.0  # learning-rate multiplier for norm-layer biases (airbench: 64)
    # "torch": lr and weight decay as torch.optim takes them, for a batch-mean loss. "per1024": the
    # airbench paper's units: lr per 1024 examples of a summed loss, divided by the momentum gain
    # 1 + 1/(1 - momentum), and weight decay per 1024 examples, decoupled from the lr (SGD only).
    lr_units: str = "torch"
    lr_schedule: str = "none"
    warmup_epochs: float = 0.0       # linear ramp length in epochs; 0 with onecycle/triangle: 25%/23% of the run
    lr_start_factor: float | None = None  # ramp start / peak lr (None: 1/25 onecycle, 0.2 triangle, 0.01 warmup)
    lr_end_factor: float | None = None    # final / peak lr (None: 1/25e4 onecycle, 0.07 triangle)
    schedule_steps: int | None = None     # the schedule's length in steps, fixed when the run starts
    label_smoothing: float = 0.0
    translate: int = 4               # random crop with this padding: shifts of up to N pixels
    pad_mode: str = "zeros"          # what the crop pads with: zeros (torchvision's RandomCrop) or reflect
    flip: str = "random"             # random per image and epoch, alternate (airbench: every other epoch), none
    ema: bool = False                # airbench's lookahead: an EMA of the weights, copied back every 5 steps
    whiten: bool = False             # set the model's stem from the training images' patch covariance
    whiten_bias_epochs: int = 3      # epochs the whitening stem's bias trains before it is frozen
    tta: int = 0                     # test-time augmentation of the final evaluation: 0, 1 flip, 2 flip+shift
    val_split: int = 0               # hold out N training images (stratified) for per-epoch eval and best.pt
    eval_every: int = 1              # epochs between evaluations; 0: only at the end (the end always is)
    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD
    max_steps: int | None = None     # stop after this many optimizer steps in total
    seed: int = 0
    device: str = "auto"
    eval: bool = True
    data: str = "cifar10"            # "cifar10" or "fake"
    init_ckpt: str | None = None     # start from these weights (cifarctl or raw course state_dict)
    save_every: int | None = None    # optimizer steps between checkpoints; None: every 3 minutes
    log_every: int = 50              # optimizer steps between metrics.jsonl step records
    amp: bool = True                 # mixed-precision training: CUDA bf16 (else fp16); CPU bf16 where native
    eval_amp: bool = False           # mixed-precision evaluation; fp32 by default, as `cifarctl evaluate`
    tensorboard: bool = False        # also write metrics.jsonl's scalars to RUN/tensorboard/ (the tensorboard extra)
    channels_last: bool | None = None  # None: on for CUDA and CPU bf16, off for CPU fp32
    compile: bool = False            # torch.compile the model
    sync_bn: bool = False            # under DDP: BatchNorm statistics over the global batch (SyncBatchNorm)
    eval_batch_size: int = 500

    def __post_init__(self) -> None:
        from cifarctl.errors import UsageError

        for name, choices in (("optimizer", OPTIMIZERS), ("lr_schedule", SCHEDULES), ("lr_units", LR_UNITS),
                              ("flip", FLIPS), ("pad_mode", PAD_MODES)):
            if getattr(self, name) not in choices:
                raise UsageError(f"unknown {name.replace('_', ' ')} {getattr(self, name)!r}: "
                                 f"choose one of {', '.join(choices)}")
        for name in ("epochs", "batch_size", "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("max_steps", "save_every", "schedule_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("translate", "val_split", "eval_every", "whiten_bias_epochs"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{name.replace('_', '-')} must not be negative")
        if self.tta not in (0, 1, 2):
            raise UsageError("--tta must be 0 (off), 1 (flip) or 2 (flip and shift)")
        if self.lr_units == "per1024" and self.optimizer != "sgd":
            raise UsageError("--lr-units per1024 is SGD's parameterisation (airbench's): use --optimizer sgd")
        if self.lr is None:
            self.lr = DEFAULT_LR[self.optimizer]
        if self.lr <= 0:
            raise UsageError("--lr must be positive")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UsageError("--label-smoothing must be in [0, 1)")
        self.mean, self.std = tuple(self.mean), tuple(self.std)  # type: ignore[assignment]

    @classmethod
    def for_model(cls, model: str, **overrides: Any) -> TrainConfig:
        """The model's registered recipe, with ``overrides`` (None values are ignored) on top."""
        from cifarctl.models.registry import default_recipe

        values = default_recipe(model)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(model=model, **values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def recipe_summary(values: dict[str, Any]) -> str:
    """One line on a recipe: ``adam lr 0.001, batch 100, 1 epoch``."""
    cfg = TrainConfig(model="-", **values)
    units = " per 1024" if cfg.lr_units == "per1024" else ""
    parts = [f"{'nesterov ' if cfg.nesterov and cfg.optimizer == 'sgd' else ''}{cfg.optimizer} lr {cfg.lr:g}{units}",
             f"batch {cfg.batch_size}", f"{cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''}"]
    if cfg.lr_schedule != "none":
        parts.append(cfg.lr_schedule)
    if cfg.weight_decay:
        parts.append(f"wd {cfg.weight_decay:g}")
    if cfg.label_smoothing:
        parts.append(f"smoothing {cfg.label_smoothing:g}")
    parts += [name for name, on in (("whitening", cfg.whiten), ("ema", cfg.ema)) if on]
    if cfg.flip == "alternate":
        parts.append("alternating flip")
    if cfg.tta:
        parts.append(f"tta {cfg.tta}")
    return ", ".join(parts)
