"""Optimizers with parameter groups, and learning-rate schedules from ``torch.optim.lr_scheduler``.

Schedules step once per optimizer step, over ``cfg.schedule_steps`` steps fixed when the run starts
(a resumed run keeps them, so lengthening ``--epochs`` continues at the final learning rate instead
of jumping back up the curve).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn
from torch.optim import lr_scheduler

from cifarctl.engine.config import TrainConfig

# The course divides the learning rate by 3 every 20 epochs.
STEP_EPOCHS = 20
STEP_FACTOR = 1 / 3
# Defaults per schedule: where the ramp starts and where the schedule ends, as fractions of the peak.
START_FACTOR = {"onecycle": 1 / 25, "triangle": 0.2}   # onecycle: torch's div_factor 25
END_FACTOR = {"onecycle": 1 / 25e4, "triangle": 0.07}   # onecycle: div_factor * final_div_factor 1e4
WARMUP_START = 0.01                                     # linear warmup of none/step/cosine starts at 1% of lr
RAMP_FRACTION = {"onecycle": 0.25, "triangle": 0.23}    # ramp share of the run when --warmup-epochs is 0
ONECYCLE_MOMENTUM_LOW = 0.85 / 0.95                     # momentum cycles from cfg.momentum down to 89% of it
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def parameter_groups(model: nn.Module) -> Iterator[tuple[str, list[nn.Parameter]]]:
    """``("weights" | "norm_bias" | "other_bias", params)``: trainable parameters by what they are.

    Weights of convs and linears decay; norm-layer parameters and biases do not by default
    (torchvision's --norm-weight-decay, timm's param groups); norm-layer *biases* may take a larger
    learning rate (airbench's bias scaler). Frozen parameters that may train later (a stem bias)
    are included; those frozen for good are skipped by the optimizer (their grad stays None).
    """
    groups: dict[str, list[nn.Parameter]] = {"weights": [], "norm_bias": [], "other_bias": []}
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            if isinstance(module, _NORMS):
                groups["norm_bias" if name == "bias" else "other_bias"].append(param)
            elif param.ndim <= 1:
                groups["other_bias"].append(param)
            else:
                groups["weights"].append(param)
    for key, params in groups.items():
        if params:
            yield key, params


def torch_hyperparameters(cfg: TrainConfig, group: str) -> tuple[float, float]:
    """``(lr, weight_decay)`` of one parameter group, as torch.optim takes them for a batch-mean loss."""
    assert cfg.lr is not None
    scale = cfg.norm_bias_lr_scale if group == "norm_bias" else 1.0
    decay = cfg.weight_decay if group == "weights" else cfg.norm_weight_decay
    if cfg.lr_units == "torch":
        return cfg.lr * scale, decay
    # airbench's parameterisation. Its summed loss with lr L/k (k = 1024 examples times Nesterov's
    # gain 1 + 1/(1 - momentum)) takes the same steps as a mean loss with lr L * batch / k; its weight
    # decay D shrinks weights by D * batch / k per step whatever the group's lr, so torch's coupled
    # weight_decay is that amount divided by the group's lr.
    kilostep = 1024 * (1 + 1 / (1 - cfg.momentum))
    lr = cfg.lr * cfg.batch_size / kilostep * scale
    return lr, decay * cfg.batch_size / kilostep / lr


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam or SGD over ``model``'s parameter groups (see ``parameter_groups``)."""
    groups = []
    for name, params in parameter_groups(model):
        lr, decay = torch_hyperparameters(cfg, name)
        groups.append({"params": params, "lr": lr, "weight_decay": decay, "name": name})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.Adam(groups, lr=cfg.lr)


def schedule_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """The schedule's length: the stored one, or all the run's epochs."""
    return cfg.schedule_steps or max(cfg.epochs * steps_per_epoch, 1)


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer,
                    steps_per_epoch: int) -> lr_scheduler.LRScheduler:
    """The run's schedule over ``schedule_steps(cfg, steps_per_epoch)`` optimizer steps."""
    total = schedule_steps(cfg, steps_per_epoch)
    kind = cfg.lr_schedule
    ramp = round(cfg.warmup_epochs * steps_per_epoch) or round(RAMP_FRACTION.get(kind, 0) * total)
    ramp = min(ramp, total - 1)
    start = cfg.lr_start_factor if cfg.lr_start_factor is not None else START_FACTOR.get(kind, WARMUP_START)
    end = cfg.lr_end_factor if cfg.lr_end_factor is not None else END_FACTOR.get(kind, 1.0)
    # OneCycleLR needs two steps in each of its phases; shorter runs get a plain ramp (below).
    if kind == "onecycle" and total >= 4:
        ramp = min(max(ramp, 2), total - 2)
        sgd = isinstance(optimizer, torch.optim.SGD)
        top = cfg.momentum if sgd else optimizer.defaults["betas"][0]  # Adam cycles its beta1
        return lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total,
            pct_start=ramp / total, anneal_strategy="cos", div_factor=1 / start,
            final_div_factor=start / end, cycle_momentum=top > 0, max_momentum=top,
            base_momentum=top * ONECYCLE_MOMENTUM_LOW)
    if kind == "triangle":
        return lr_scheduler.SequentialLR(optimizer, [
            lr_scheduler.LinearLR(optimizer, start_factor=start, end_factor=1.0, total_iters=max(ramp, 1)),
            lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=end, total_iters=max(total - ramp, 1)),
        ], milestones=[ramp])
    if kind == "step":
        main: lr_scheduler.LRScheduler = lr_scheduler.StepLR(
            optimizer, step_size=STEP_EPOCHS * steps_per_epoch, gamma=STEP_FACTOR)
    elif kind == "cosine":
        main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total - ramp, 1))
    else:
        main = lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if not ramp:
        return main
    warmup = lr_scheduler.LinearLR(optimizer, start_factor=start, end_factor=1.0, total_iters=ramp)
    return lr_scheduler.SequentialLR(optimizer, [warmup, main], milestones=[ramp])
