"""What ``cifarctl tune`` searches: the settings that matter for any classifier, as Optuna suggests them.

Every trial starts from the model's own recipe (``TrainConfig.for_model``) and changes: the optimizer (SGD,
Adam, and Muon where the model has conv filters for it), the peak lr, bounded by the lr range test of
that optimizer (``cifarctl.tune.lr_range``) and scaled with the batch size (linearly for SGD, by its square
root for Adam, as their noise scales), the classifier's lr as a share of it, batch size, weight decay,
label smoothing, momentum, the schedule's warm-up, lookahead (an EMA of the weights), the flip's pattern
and the final evaluation's TTA level. The lr is searched as a factor of the bound (``lr_factor``), so one
range covers every optimizer and batch; the lr it makes is recorded beside it.
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
FLIPS = ("random", "alternate")


def suggest(trial: Any, bounds: dict[str, float], base_batch: int, optimizers: tuple[str, ...]) -> dict[str, Any]:
    """One trial's settings (``TrainConfig`` keys) from Optuna's ``trial``; ``bounds``: the lr range tests'
    bound per optimizer at ``base_batch`` (``{"sgd": 1.2, "adam": 0.004}``)."""
    optimizer = trial.suggest_categorical("optimizer", list(optimizers))
    batch = trial.suggest_categorical("batch_size", list(BATCH_SIZES))
    factor = trial.suggest_float("lr_factor", *LR_FACTORS, log=True)
    sgd_part = bounds["sgd"] * batch / base_batch * factor  # SGD's lr (Muon's head and biases take it)
    if optimizer == "adam":
        lr = bounds["adam"] * math.sqrt(batch / base_batch) * factor
    elif optimizer == "muon":
        lr = trial.suggest_float("muon_lr", *MUON_LR, log=True)
    else:
        lr = sgd_part
    settings: dict[str, Any] = {
        # lr_without_norm = lr: one lr for every layer of a model without normalisation too (a config file has
        # no null to unset the default recipe's lower lr for such a model with)
        "optimizer": optimizer, "batch_size": batch, "lr": lr, "lr_units": "torch", "lr_without_norm": lr,
        "micro_batch": None, "lr_schedule": "onecycle", "lr_start_factor": None, "lr_end_factor": None,
        "weight_decay": trial.suggest_float("weight_decay", *WEIGHT_DECAY, log=True),
        "label_smoothing": trial.suggest_float("label_smoothing", *LABEL_SMOOTHING),
        "ema": trial.suggest_categorical("ema", [False, True]),
        "flip": trial.suggest_categorical("flip", list(FLIPS)),
    }
    share = trial.suggest_float("head_share", *HEAD_SHARES, log=True)
    if optimizer == "muon":  # onecycle cycles a momentum Muon keeps apart: the triangle's ramp and fall instead
        settings.update(head_lr=sgd_part * share, bias_lr=sgd_part, nesterov=True, muon_weight_decay=0.0,
                        lr_schedule="triangle")
    else:
        settings.update(head_lr=lr * share, bias_lr=None)
    if optimizer != "adam":
        settings.update(momentum=trial.suggest_float("momentum", *MOMENTUM), nesterov=True)
    settings["warmup_epochs"] = 0.0  # the ramp is the share below of the run (onecycle's pct_start)
    settings["warmup_fraction"] = trial.suggest_float("warmup_fraction", *WARMUP_SHARES)
    tta = trial.suggest_categorical("tta", list(TTA_CHOICES))
    settings["tta"] = int(tta) if tta.isdigit() else tta
    return settings


def default_params(cfg: Any, bounds: dict[str, float], norm_free: bool) -> dict[str, Any] | None:
    """The model's own recipe ``cfg`` as the space's parameters, as near as the space holds it (values
    outside a range at its end), so that a study's first trial is the default it has to beat; None for a
    recipe the space cannot express (another schedule or optimizer, lr units, batch size). ``bounds`` were
    measured at ``cfg``'s batch size (the range tests run the recipe's own)."""
    if cfg.optimizer not in ("sgd", "adam") or cfg.lr_units != "torch" or cfg.lr_schedule != "onecycle" or \
            cfg.batch_size not in BATCH_SIZES or cfg.warmup_epochs or str(cfg.tta) not in TTA_CHOICES or \
            cfg.flip not in FLIPS or cfg.optimizer not in bounds:
        return None
    lr = cfg.lr_without_norm if norm_free and cfg.lr_without_norm is not None else cfg.lr
    bound = bounds[cfg.optimizer]
    params: dict[str, Any] = {
        "optimizer": cfg.optimizer, "batch_size": cfg.batch_size, "lr_factor": _within(lr / bound, LR_FACTORS),
        "weight_decay": _within(cfg.weight_decay, WEIGHT_DECAY), "label_smoothing": _within(cfg.label_smoothing,
                                                                                            LABEL_SMOOTHING),
        "ema": cfg.ema, "flip": cfg.flip, "head_share": _within((cfg.head_lr or lr) / lr, HEAD_SHARES),
        "warmup_fraction": _within(cfg.warmup_fraction or 0.25, WARMUP_SHARES), "tta": str(cfg.tta)}
    if cfg.optimizer == "sgd":
        params["momentum"] = _within(cfg.momentum, MOMENTUM)
    return params


def _within(value: float, bounds: tuple[float, float]) -> float:
    return min(max(float(value), bounds[0]), bounds[1])
