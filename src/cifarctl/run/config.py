"""Training settings as one dataclass of plain values (stored in config.json and checkpoints).

``TrainConfig(model=...)`` has the course's recipe as its defaults. ``TrainConfig.for_model(name,
**overrides)`` starts from the model's own recipe in the registry instead, then applies
``overrides``: that is what ``cifarctl train MODEL`` does, and a flag changes one field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from cifarctl.data.loader import MEAN, STD

OPTIMIZERS = ("adam", "sgd", "muon")
SCHEDULES = ("none", "step", "cosine", "onecycle", "triangle", "linear")
LR_UNITS = ("torch", "per1024", "sum")
FLIPS = ("random", "alternate", "none")
PAD_MODES = ("zeros", "reflect")
DEFAULT_LR = {"adam": 1e-3, "sgd": 0.05, "muon": 0.02}
# Test-time augmentation: 0 none, 1 flip, 2 flip and 1-pixel shifts, "selective" level 2 for the least
# confident images only (``cifarctl.evaluation``).
SELECTIVE = "selective"
DEFAULT_TTA_FRACTION = 0.25  # selective TTA looks twice at this share of the test images (the record's)
TTA_LEVELS: tuple[int | str, ...] = (0, 1, 2, SELECTIVE)


class _Null:
    """A setting set to None on purpose (a config file's ``"none"``), where an override of None means
    "keep the recipe's value": ``for_model("airbench94", "muon", bias_lr=NULL)`` trains without a bias lr."""

    _one: _Null | None = None

    def __new__(cls) -> _Null:
        if cls._one is None:
            cls._one = super().__new__(cls)
        return cls._one

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "NULL"

    def __reduce__(self) -> str:
        return "NULL"


NULL = _Null()


def parse_tta(text: str | int | None) -> int | str | None:
    """``--tta``'s value: 0, 1, 2 or selective (None stays None). Usage: ``parse_tta("2") == 2``"""
    from cifarctl.errors import UsageError

    if text is None:
        return None
    value = str(text).strip().lower()
    if value.isdigit() and int(value) in TTA_LEVELS:
        return int(value)
    if value == SELECTIVE:
        return SELECTIVE
    raise UsageError(f"--tta {text!r}: use 0 (off), 1 (flip), 2 (flip and shift) or selective (level 2 for the "
                     "least confident images)")


@dataclass
class TrainConfig:
    """Everything that defines a run. Defaults are the course's: Adam, lr 1e-3, batch 100, CE loss.

    Usage: ``TrainConfig(model="resnet50", epochs=1, device="cpu")``, or
    ``TrainConfig.for_model("airbench94", device="cpu")`` for the model's own recipe.
    """

    model: str                       # a registered name, or a spec: path/to/file.py:Name, module:name, torchvision:NAME
    recipe: str | None = None        # the model's recipe these values started from (`cifarctl models`)
    epochs: float = 1                # may be a fraction: the run ends at the step where it is reached
    batch_size: int = 100
    drop_last: bool = False          # an epoch's last, smaller batch left out (its images come next epoch)
    # Images run forward and backward at once: a larger batch is split into equal chunks whose
    # gradients add up to the batch's (one optimizer step; BatchNorm sees each chunk). None: whole.
    micro_batch: int | None = None
    lr: float | None = None          # peak learning rate; None: 1e-3 for Adam (the course's), 0.05 for SGD
    optimizer: str = "adam"
    momentum: float = 0.9            # SGD's (the upper bound of onecycle's momentum cycle); muon: of its SGD part
    nesterov: bool = False           # SGD and muon
    # --optimizer muon: Muon (orthogonalised momentum) on conv filters with --lr, Nesterov SGD with
    # --momentum on everything else: the head at head_lr, biases at bias_lr (in lr_units; None: --lr).
    muon_momentum: float = 0.95
    # Decoupled weight decay of Muon's filters, in lr_units ("sum": per example): each step multiplies
    # them by 1 - lr * decay (* batch), lr the filters' lr of that step. 0: none (the Muon record's).
    muon_weight_decay: float = 0.0
    # Muon rescales its filter banks every start + int(rise * progress) steps (progress: the share of the
    # schedule done): (1, 0) every step, the Muon record's; (2, 15) the current record's, rarer as it goes.
    muon_renorm_every: tuple[int, int] = (1, 0)
    # The quintic Newton-Schulz iteration's coefficients (a, b, c) of Muon's orthogonalisation.
    ns_coefficients: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)
    # The peak lr of the classifier's weights (the model's final linear layer), in lr_units; None: --lr.
    head_lr: float | None = None
    # The peak lr of a model without normalisation layers (every layer then is like the classifier:
    # nothing rescales its steps); None: --lr. The classifier keeps head_lr.
    lr_without_norm: float | None = None
    bias_lr: float | None = None
    weight_decay: float = 0.0        # L2 penalty on weights as the optimizer defines it (Adam: coupled)
    norm_weight_decay: float = 0.0   # the same for norm-layer parameters and biases (torchvision's flag)
    norm_bias_lr_scale: float = 1.0  # learning-rate multiplier for norm-layer biases (airbench: 64)
    # "torch": lr and weight decay as torch.optim takes them, for a batch-mean loss. "per1024": the
    # airbench paper's units: lr per 1024 examples of a summed loss, divided by the momentum gain
    # 1 + 1/(1 - momentum), and weight decay per 1024 examples, decoupled from the lr (SGD only).
    # "sum": the Muon record's units: lr for a summed loss (per example), weight decay per example and
    # step, decoupled from the lr (SGD, and the SGD part of muon).
    lr_units: str = "torch"
    lr_schedule: str = "none"
    warmup_epochs: float = 0.0       # linear ramp length in epochs; 0 with onecycle/triangle: warmup_fraction of the run
    warmup_fraction: float | None = None  # the ramp's share of the run when warmup_epochs is 0; None: 25%/23%
    # The ramp never rises faster than from its start to the peak in this many steps: a shorter ramp
    # (a short run) stops below the peak, and the rest of the schedule scales down with it. 0: no bound.
    min_ramp_steps: int = 0
    lr_start_factor: float | None = None  # ramp start / peak lr (None: 1/25 onecycle, 0.2 triangle, 0.01 warmup)
    lr_end_factor: float | None = None    # final / peak lr (None: 1/25e4 onecycle, 0.07 triangle)
    schedule_steps: int | None = None     # the schedule's length in steps, fixed when the run starts
    # Seconds the whole run may take, start-up and final evaluation included: the run measures its
    # step and evaluation times, then fixes schedule_steps (and max_steps, epochs) to what fits.
    time_budget: float | None = None
    label_smoothing: float = 0.0
    translate: int = 4               # random crop with this padding: shifts of up to N pixels
    pad_mode: str = "zeros"          # what the crop pads with: zeros (torchvision's RandomCrop) or reflect
    flip: str = "random"             # random per image and epoch, alternate (airbench: every other epoch), none
    # Brightness shift and contrast scale, drawn per image and epoch on the normalised image: x + b, times
    # 1 + c, with b and c uniform in +-color_jitter (the current record's 0.1399 and 0.1308). (0, 0): none.
    color_jitter: tuple[float, float] = (0.0, 0.0)
    ema: bool = False                # airbench's lookahead: an EMA of the weights, copied back every 5 steps
    # Call the model's init_from_data hook with a sample of training images before a fresh run's first
    # step (airbench94 sets its whitening stem from their patch covariance); a model without it refuses.
    init_from_data: bool = False
    # Test-time augmentation of the final evaluation: 0, 1 (flip), 2 (flip and shift), or "selective": every
    # image once, then level 2 for the tta_fraction least confident (the current record's).
    tta: int | str = 0
    tta_fraction: float = DEFAULT_TTA_FRACTION
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
    channels_last: bool | None = None  # None: where it measured faster, for a model that takes it (device.uses_channels_last)
    keep_memory: bool | None = None  # glibc keeps freed memory during the run; None: where faster (CPU fp32)
    compile: bool = False            # torch.compile the model
    sync_bn: bool = False            # under DDP: BatchNorm statistics over the global batch (SyncBatchNorm)
    eval_batch_size: int = 500
    model_options: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the model's factory
    num_classes: int | None = None   # passed to a spec's constructor (None: the dataset's, where it takes one)
    # What a family's time budget chose and why (``cifarctl train airbench --time-budget 5m``): the
    # candidates' predictions and this machine's probe (cifarctl.training.choice.Choice); None: named.
    choice: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        from cifarctl.errors import UsageError

        for name, choices in (("optimizer", OPTIMIZERS), ("lr_schedule", SCHEDULES), ("lr_units", LR_UNITS),
                              ("flip", FLIPS), ("pad_mode", PAD_MODES)):
            if getattr(self, name) not in choices:
                raise UsageError(f"unknown {name.replace('_', ' ')} {getattr(self, name)!r}: "
                                 f"choose one of {', '.join(choices)}")
        if not self.epochs > 0:
            raise UsageError("--epochs must be positive")
        for name in ("batch_size", "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("max_steps", "save_every", "schedule_steps", "micro_batch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("translate", "val_split", "eval_every", "min_ramp_steps"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{name.replace('_', '-')} must not be negative")
        self._check_augmentation_and_tta()
        if self.lr_units != "torch" and self.optimizer == "adam":
            raise UsageError(f"--lr-units {self.lr_units} is an SGD parameterisation: use --optimizer sgd or muon")
        if self.lr is None:
            self.lr = DEFAULT_LR[self.optimizer]
        for name in ("lr", "head_lr", "bias_lr", "lr_without_norm"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be positive")
        if self.time_budget is not None:
            if self.time_budget <= 0:
                raise UsageError("--time-budget must be positive (90s, 5m, 1h)")
            if self.max_steps is not None and self.schedule_steps is None:
                raise UsageError("--time-budget chooses the run's length: drop --max-steps")
        self.model_options = dict(self.model_options or {})
        if ":" in self.model:  # a file spec keeps its absolute path: the run resumes from any folder
            from cifarctl.models.spec import canonical_spec

            self.model = canonical_spec(self.model)
        if self.warmup_fraction is not None and not 0 < self.warmup_fraction < 1:
            raise UsageError("--warmup-fraction is the ramp's share of the run: above 0, below 1")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UsageError("--label-smoothing must be in [0, 1)")
        self.mean, self.std = tuple(self.mean), tuple(self.std)  # type: ignore[assignment]

    def _check_augmentation_and_tta(self) -> None:
        from cifarctl.errors import UsageError

        self.color_jitter = tuple(float(v) for v in self.color_jitter)  # type: ignore[assignment]
        self.muon_renorm_every = tuple(int(v) for v in self.muon_renorm_every)  # type: ignore[assignment]
        self.ns_coefficients = tuple(float(v) for v in self.ns_coefficients)  # type: ignore[assignment]
        if len(self.color_jitter) != 2 or min(self.color_jitter) < 0 or self.color_jitter[1] >= 1:
            raise UsageError("--color-jitter takes BRIGHTNESS,CONTRAST: two ranges of 0 or more, the contrast's below 1")
        if len(self.muon_renorm_every) != 2 or self.muon_renorm_every[0] < 1 or self.muon_renorm_every[1] < 0:
            raise UsageError("muon_renorm_every takes (start, rise): every start + int(rise * progress) steps, start >= 1")
        if self.tta not in TTA_LEVELS:
            raise UsageError("--tta must be 0 (off), 1 (flip), 2 (flip and shift) or selective (level 2 for the "
                             "least confident images)")
        if not 0 < self.tta_fraction <= 1:
            raise UsageError("--tta-fraction is the share of images looked at again: above 0, at most 1")
        if self.muon_weight_decay < 0:
            raise UsageError("--muon-weight-decay must not be negative")

    @classmethod
    def for_model(cls, model: str, recipe: str | None = None, **overrides: Any) -> TrainConfig:
        """The model's registered recipe (its default, or the one called ``recipe``), with
        ``overrides`` (None values are ignored; ``NULL`` sets a setting to None) on top.

        Usage: ``TrainConfig.for_model("airbench94", recipe="muon", seed=1)``
        """
        from cifarctl.models import model_card

        chosen = model_card(model).get_recipe(recipe)
        values = dict(chosen.values)
        given = {k: v for k, v in overrides.items() if v is not None}
        # The model's constructor arguments, like every other setting, change one at a time.
        given["model_options"] = {**values.get("model_options", {}), **given.get("model_options", {})}
        values.update(given)
        values = {k: None if v is NULL else v for k, v in values.items()}  # a setting unset on purpose
        return cls(model=model, recipe=chosen.name, **values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A config as config.json and checkpoints store it; those of earlier versions too (``_upgraded``)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in _upgraded(values).items() if k in known})


def _upgraded(values: dict[str, Any]) -> dict[str, Any]:
    """Settings stored before a model's own settings moved to its constructor: ``whiten`` is the generic
    ``init_from_data`` now, and the epochs a whitened stem's bias trains are a model option (only models
    with that hook took ``whiten``; a value other than their default of 3 goes to their constructor)."""
    if "whiten" not in values:
        return values
    upgraded = {k: v for k, v in values.items() if k not in ("whiten", "whiten_bias_epochs")}
    upgraded["init_from_data"] = bool(values["whiten"])
    if values["whiten"] and values.get("whiten_bias_epochs", 3) != 3:
        upgraded["model_options"] = {"whiten_bias_epochs": values["whiten_bias_epochs"],
                                     **(values.get("model_options") or {})}
    return upgraded


def recipe_summary(values: dict[str, Any]) -> str:
    """One line on a recipe: ``adam lr 0.001, batch 100, 1 epoch``."""
    cfg = TrainConfig(model="-", **values)
    units = {"per1024": " per 1024", "sum": " per example"}.get(cfg.lr_units, "")
    if cfg.optimizer == "muon":
        first = (f"muon lr {cfg.lr:g} on filters, nesterov sgd head lr {cfg.head_lr or cfg.lr:g}{units}, "
                 f"bias lr {cfg.bias_lr or cfg.lr:g}{units}")
    else:
        first = f"{'nesterov ' if cfg.nesterov and cfg.optimizer == 'sgd' else ''}{cfg.optimizer} lr {cfg.lr:g}{units}"
        if cfg.head_lr is not None:
            first += f", head lr {cfg.head_lr:g}{units}"
        if cfg.lr_without_norm is not None:
            first += f" (lr {cfg.lr_without_norm:g} without norm layers)"
    batch = f"batch {cfg.batch_size}"
    if cfg.micro_batch and cfg.micro_batch < cfg.batch_size:
        batch += f" in chunks of {cfg.micro_batch}"
    parts = [first, batch, f"{cfg.epochs:g} epoch{'s' if cfg.epochs != 1 else ''}"]
    if cfg.lr_schedule != "none":
        parts.append(cfg.lr_schedule)
    if cfg.weight_decay:
        parts.append(f"wd {cfg.weight_decay:g}")
    if cfg.label_smoothing:
        parts.append(f"smoothing {cfg.label_smoothing:g}")
    parts += [name for name, on in (("init from data", cfg.init_from_data), ("ema", cfg.ema)) if on]
    if cfg.flip == "alternate":
        parts.append("alternating flip")
    if any(cfg.color_jitter):
        parts.append("brightness/contrast {:g}/{:g}".format(*cfg.color_jitter))
    if cfg.tta == SELECTIVE:
        parts.append(f"selective tta ({cfg.tta_fraction:.0%})")
    elif cfg.tta:
        parts.append(f"tta {cfg.tta}")
    return ", ".join(parts)
