"""What ``cifarctl tune`` searches: the settings that matter for any classifier, as Optuna suggests them.

Every trial starts from the model's own recipe (``TrainConfig.for_model``) and changes: the optimizer (SGD,
Adam, and Muon where the model has conv filters for it), the peak lr, bounded by the lr range test of that
optimizer (``cifarctl.tune.lr_range``) and scaled down for a batch smaller than the test's (``batch_scale``),
the classifier's lr as a share of it, batch size, weight decay, label smoothing, momentum, the schedule's
warm-up, lookahead (an EMA of the weights), the flip's pattern, the random crop's shift and padding and the
final evaluation's TTA level. The lr is searched as a factor of the bound (``lr_factor``), so one range
covers every optimizer and batch; the lr it makes is recorded beside it.
"""

from __future__ import annotations

import math
from typing import Any

BATCH_SIZES = (128, 256, 512, 1024)
LR_FACTORS = (0.001, 1.0)         # the lr searched from a thousandth of the range test's bound up to it
HEAD_SHARES = (0.02, 1.0)         # the classifier's lr as a share of the lr (the default recipe's: 1/20)
WEIGHT_DECAY = (1e-6, 1e-2)       # torch's units (L2 as the optimizer applies it)
LABEL_SMOOTHING = (0.0, 0.3)
MOMENTUM = (0.8, 0.97)
WARMUP_SHARES = (0.05, 0.5)       # the ramp of the onecycle schedule, as a share of the run
MUON_LR = (0.01, 0.5)             # Muon's step on the filters is orthogonalised: its lr is a step size, not a range test's
TTA_CHOICES = ("0", "1", "2", "selective")
FLIP_PATTERNS = ("random", "alternate")  # run.config.FLIPS less none
SEARCHED = ("optimizer", "batch_size", "lr", "lr_units", "lr_without_norm", "micro_batch", "lr_schedule",
            "lr_start_factor", "lr_end_factor", "weight_decay", "label_smoothing", "ema", "flip", "translate",
            "pad_mode", "head_lr", "bias_lr", "nesterov", "muon_weight_decay", "momentum", "warmup_epochs",
            "warmup_fraction", "tta")  # every setting a trial sets: a --config file's value of one is kept
TRANSLATE = (0, 4)                # the random crop's shift in pixels
PAD_MODES = ("zeros", "reflect")


def suggest(trial: Any, bounds: dict[str, float], base_batch: int, optimizers: tuple[str, ...],
            fixed: dict[str, Any] | None = None) -> dict[str, Any]:
    """One trial's settings (``TrainConfig`` keys) from Optuna's ``trial``; ``bounds``: the lr range tests'
    bound per optimizer at ``base_batch`` (``{"sgd": 1.2, "adam": 0.004}``). A setting in ``fixed`` (a
    ``--config`` file's) is not searched: it keeps the file's value in every trial."""
    fixed = fixed or {}

    def pick(setting: str, ask: Any) -> Any:
        return fixed[setting] if setting in fixed else ask()

    optimizer = pick("optimizer", lambda: trial.suggest_categorical("optimizer", list(optimizers)))
    batch = pick("batch_size", lambda: trial.suggest_categorical("batch_size", list(BATCH_SIZES)))
    factor = 1.0 if "lr" in fixed and optimizer != "muon" else trial.suggest_float("lr_factor", *LR_FACTORS, log=True)
    sgd_part = bounds["sgd"] * batch_scale("sgd", batch, base_batch) * factor  # (Muon's head and biases take it)
    if optimizer == "adam":
        lr = pick("lr", lambda: bounds["adam"] * batch_scale("adam", batch, base_batch) * factor)
    elif optimizer == "muon":
        lr = pick("lr", lambda: trial.suggest_float("muon_lr", *MUON_LR, log=True))
    else:
        lr = pick("lr", lambda: sgd_part)
    settings: dict[str, Any] = {
        # lr_without_norm = lr: one lr for every layer of a model without normalisation too
        "optimizer": optimizer, "batch_size": batch, "lr": lr, "lr_units": "torch", "lr_without_norm": lr,
        "micro_batch": None, "lr_schedule": "onecycle", "lr_start_factor": None, "lr_end_factor": None,
        "weight_decay": pick("weight_decay", lambda: trial.suggest_float("weight_decay", *WEIGHT_DECAY, log=True)),
        "label_smoothing": pick("label_smoothing", lambda: trial.suggest_float("label_smoothing", *LABEL_SMOOTHING)),
        "ema": pick("ema", lambda: trial.suggest_categorical("ema", [False, True])),
        "flip": pick("flip", lambda: trial.suggest_categorical("flip", list(FLIP_PATTERNS))),
        "translate": pick("translate", lambda: trial.suggest_int("translate", *TRANSLATE)),
        "pad_mode": pick("pad_mode", lambda: trial.suggest_categorical("pad_mode", list(PAD_MODES))),
    }
    share = 1.0 if "head_lr" in fixed else trial.suggest_float("head_share", *HEAD_SHARES, log=True)
    if optimizer == "muon":  # onecycle cycles a momentum Muon keeps apart: the triangle's ramp and fall instead
        settings.update(head_lr=sgd_part * share, bias_lr=sgd_part, nesterov=True, muon_weight_decay=0.0,
                        lr_schedule="triangle")
    else:
        settings.update(head_lr=lr * share, bias_lr=None)
    if optimizer != "adam":
        settings.update(momentum=pick("momentum", lambda: trial.suggest_float("momentum", *MOMENTUM)), nesterov=True)
    settings["warmup_epochs"] = 0.0  # the ramp is the share below of the run (onecycle's pct_start)
    settings["warmup_fraction"] = pick("warmup_fraction", lambda: trial.suggest_float("warmup_fraction",
                                                                                        *WARMUP_SHARES))
    tta = pick("tta", lambda: trial.suggest_categorical("tta", list(TTA_CHOICES)))
    settings["tta"] = int(tta) if str(tta).isdigit() else tta
    settings.update({k: v for k, v in fixed.items() if k in settings})  # the file's word is final
    return settings


def batch_scale(optimizer: str, batch: int, base_batch: int) -> float:
    """The share of the range test's bound (measured at ``base_batch``) that a trial at ``batch`` may reach: less
    for a smaller batch, as its gradient's noise grows (linearly for SGD, by the square root for Adam), never
    more than the bound for a larger one (the most the test saw train)."""
    ratio = min(batch / base_batch, 1.0)
    return math.sqrt(ratio) if optimizer == "adam" else ratio


def default_params(cfg: Any, bounds: dict[str, float], norm_free: bool) -> dict[str, Any] | None:
    """The model's own recipe ``cfg`` as the space's parameters, as near as the space holds it (values
    outside a range at its end), so that a study's first trial is the default it has to beat; None for a
    recipe the space cannot express (another schedule or optimizer, lr units, batch size). ``bounds`` were
    measured at ``cfg``'s batch size (the range tests run the recipe's own)."""
    if cfg.optimizer not in ("sgd", "adam") or cfg.lr_units != "torch" or cfg.lr_schedule != "onecycle" or \
            cfg.batch_size not in BATCH_SIZES or cfg.warmup_epochs or str(cfg.tta) not in TTA_CHOICES or \
            cfg.flip not in FLIP_PATTERNS or cfg.optimizer not in bounds or cfg.pad_mode not in PAD_MODES:
        return None
    lr = cfg.lr_without_norm if norm_free and cfg.lr_without_norm is not None else cfg.lr
    bound = bounds[cfg.optimizer]
    params: dict[str, Any] = {
        "optimizer": cfg.optimizer, "batch_size": cfg.batch_size, "lr_factor": _within(lr / bound, LR_FACTORS),
        "weight_decay": _within(cfg.weight_decay, WEIGHT_DECAY), "label_smoothing": _within(cfg.label_smoothing,
                                                                                            LABEL_SMOOTHING),
        "ema": cfg.ema, "flip": cfg.flip, "head_share": _within((cfg.head_lr or lr) / lr, HEAD_SHARES),
        "warmup_fraction": _within(cfg.warmup_fraction or 0.25, WARMUP_SHARES), "tta": str(cfg.tta),
        "translate": int(_within(cfg.translate, TRANSLATE)), "pad_mode": cfg.pad_mode}
    if cfg.optimizer == "sgd":
        params["momentum"] = _within(cfg.momentum, MOMENTUM)
    return params


def _within(value: float, bounds: tuple[float, float]) -> float:
    return min(max(float(value), bounds[0]), bounds[1])


def good_starts(default: dict[str, Any] | None, bounds: dict[str, float], base_batch: int,
                optimizers: tuple[str, ...]) -> list[dict[str, Any]]:
    """What makes cifarctl's airbench nets good, as the space's parameters for any model: the paper's recipe
    (Nesterov SGD at batch 1024, its lr and decay in torch's units against this model's bound, smoothing 0.2,
    lookahead, alternate flip, 2-pixel reflected shifts, TTA 2), and the Muon record's and the current
    record's filters (Muon lr 0.24 and 0.205, the record's smoothing 0.09 and selective TTA). Where the airbench
    net's own units do not carry over (the head's and biases' lr under its scaled logits) the default's are
    kept. ``default``: the default's parameters (None where the space cannot hold it)."""
    from cifarctl.run.config import TrainConfig
    from cifarctl.training.schedule import torch_hyperparameters

    paper = TrainConfig.for_model("airbench94", "paper")
    lr, decay = torch_hyperparameters(paper, "weights")
    common = {"batch_size": 1024, "flip": "alternate", "translate": 2, "pad_mode": "reflect", "warmup_fraction": 0.23}
    own = {k: default[k] for k in ("lr_factor", "head_share", "weight_decay") if default and k in default}
    starts = []
    if "sgd" in optimizers and "sgd" in bounds:
        reach = bounds["sgd"] * batch_scale("sgd", 1024, base_batch)
        starts.append({**common, "optimizer": "sgd", "lr_factor": _within(lr / reach, LR_FACTORS),
                       "weight_decay": _within(decay, WEIGHT_DECAY), "head_share": HEAD_SHARES[1],
                       "label_smoothing": 0.2, "ema": True, "momentum": 0.85, "tta": "2"})
    if "muon" in optimizers:
        muon = {**common, "optimizer": "muon", "lr_factor": 0.1, "head_share": 0.05, "weight_decay": 5e-4, **own,
                "ema": False}
        starts.append({**muon, "muon_lr": 0.24, "label_smoothing": 0.2, "momentum": 0.85, "tta": "2"})
        starts.append({**muon, "muon_lr": 0.205, "label_smoothing": 0.09, "momentum": 0.825, "tta": "selective"})
    return starts
