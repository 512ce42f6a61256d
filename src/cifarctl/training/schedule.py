"""Optimizers with parameter groups, and learning-rate schedules from ``torch.optim.lr_scheduler``.

Schedules step once per optimizer step, over ``cfg.schedule_steps`` steps fixed when the run starts
(a resumed run keeps them, so lengthening ``--epochs`` continues at the final learning rate instead
of jumping back up the curve).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.optim import lr_scheduler

from cifarctl.models.hooks import ParameterGroup, declared_groups
from cifarctl.run.config import TrainConfig

# The course divides the learning rate by 3 every 20 epochs.
STEP_EPOCHS = 20
STEP_FACTOR = 1 / 3
# Defaults per schedule: where the ramp starts and where the schedule ends, as fractions of the peak.
START_FACTOR = {"onecycle": 1 / 25, "triangle": 0.2}   # onecycle: torch's div_factor 25
END_FACTOR = {"onecycle": 1 / 25e4, "triangle": 0.07,   # onecycle: div_factor * final_div_factor 1e4
              "linear": 0.0}
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


def muon_groups(model: nn.Module, declared: list[ParameterGroup] = ()) -> Iterator[tuple[str, list[nn.Parameter]]]:
    """``parameter_groups`` split for Muon: ``filters`` (conv weights, ndim 4) take Muon's step; the
    other weights (the head) are ``head``; the groups the model declares (``parameter_groups`` hook)
    come out by their own names, just before the ordinary group their parameters were in."""
    owner = {id(p): group.name for group in declared for p in group.params}
    by_name = {group.name: list(group.params) for group in declared}
    for name, params in parameter_groups(model):
        if name == "weights":
            filters = [p for p in params if p.ndim == 4 and id(p) not in owner]
            rest = [p for p in params if p.ndim != 4 and id(p) not in owner]
            yield from ((key, ps) for key, ps in (("filters", filters), ("head", rest)) if ps)
            continue
        for declared_name in dict.fromkeys(owner[id(p)] for p in params if id(p) in owner):
            yield declared_name, by_name.pop(declared_name)
        rest = [p for p in params if id(p) not in owner]
        if rest:
            yield name, rest


def head_groups(model: nn.Module) -> Iterator[tuple[str, list[nn.Parameter]]]:
    """``parameter_groups`` with the classifier's weight (the final linear layer's) apart as ``head``, for a
    recipe that gives the classifier its own lr (``head_lr``); everything else stays where it was. A model
    without a linear layer has no ``head`` group: its classifier trains at ``lr``."""
    head = final_linear(model)
    head_ids = {id(head.weight)} if head is not None else set()
    for name, params in parameter_groups(model):
        if name == "weights":
            rest = [p for p in params if id(p) not in head_ids]
            linear = [p for p in params if id(p) in head_ids]
            yield from ((key, ps) for key, ps in (("weights", rest), ("head", linear)) if ps)
        else:
            yield name, params


def final_linear(model: nn.Module) -> nn.Linear | None:
    """The model's classifier: its only linear layer, or of several the last one a forward pass calls
    (a 2-image probe in eval mode, RNG and modes left as they were); None if it has no linear layer."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if len(linears) <= 1:
        return linears[0] if linears else None
    called: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda module, _args, _out: called.append(module)) for m in linears]
    modes = {m: m.training for m in model.modules()}
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model(torch.zeros(2, 3, 32, 32, device=device))
    except Exception:  # noqa: BLE001  (a model that needs other inputs: its last linear layer, as declared)
        called = []
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes.items():
            module.training = training
    return called[-1] if called else linears[-1]  # type: ignore[return-value]


def has_norm_layers(model: nn.Module) -> bool:
    return any(isinstance(m, _NORMS) for m in model.modules())


def torch_hyperparameters(cfg: TrainConfig, group: str, norm_free: bool = False) -> tuple[float, float]:
    """``(lr, weight_decay)`` of one parameter group, as torch.optim takes them for a batch-mean loss.
    ``norm_free``: the model has no normalisation layer (``cfg.lr_without_norm`` then applies)."""
    assert cfg.lr is not None
    if norm_free and cfg.lr_without_norm is not None and cfg.optimizer != "muon" and group != "head":
        cfg = dataclasses.replace(cfg, lr=cfg.lr_without_norm)
    if cfg.optimizer == "muon":
        if group == "filters":  # Muon's own units: its steps are orthogonalised, whatever the loss's scale
            per_step = {"sum": cfg.batch_size, "per1024": cfg.batch_size / 1024}.get(cfg.lr_units, 1.0)
            return cfg.lr, cfg.muon_weight_decay * per_step  # decoupled: the step's lr times this
        base = cfg.head_lr if group == "head" else cfg.bias_lr
        lr, scale = base or cfg.lr, 1.0
    elif group == "head":
        lr, scale = cfg.head_lr or cfg.lr, 1.0
    else:
        lr, scale = cfg.lr, cfg.norm_bias_lr_scale if group == "norm_bias" else 1.0
    decay = cfg.weight_decay if group in ("weights", "head") else cfg.norm_weight_decay
    if cfg.lr_units == "torch":
        return lr * scale, decay
    if cfg.lr_units == "sum":
        # A summed loss with lr L takes the steps of a mean loss with lr L * batch; weight decay D per
        # example shrinks the weights by D * batch per step whatever the lr (torch couples it to the lr).
        mean_lr = lr * scale * cfg.batch_size
        return mean_lr, decay * cfg.batch_size / mean_lr
    # airbench's parameterisation. Its summed loss with lr L/k (k = 1024 examples times Nesterov's
    # gain 1 + 1/(1 - momentum)) takes the same steps as a mean loss with lr L * batch / k; its weight
    # decay D shrinks weights by D * batch / k per step whatever the group's lr, so torch's coupled
    # weight_decay is that amount divided by the group's lr.
    kilostep = 1024 * (1 + 1 / (1 - cfg.momentum))
    lr = lr * cfg.batch_size / kilostep * scale
    return lr, decay * cfg.batch_size / kilostep / lr


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam, SGD or Muon over ``model``'s parameter groups (see ``parameter_groups``, ``muon_groups``)."""
    groups: list[dict[str, Any]] = []
    muon = cfg.optimizer == "muon"
    declared = declared_groups(model, cfg.to_dict()) if muon else []
    train_epochs = {group.name: group.train_epochs for group in declared if group.train_epochs is not None}
    grouping = (muon_groups(model, declared) if muon else head_groups(model) if cfg.head_lr is not None
                else parameter_groups(model))
    norm_free = cfg.lr_without_norm is not None and not has_norm_layers(model)
    for name, params in grouping:
        lr, decay = torch_hyperparameters(cfg, name, norm_free)
        groups.append({"params": params, "lr": lr, "weight_decay": decay, "name": name})
        if name in train_epochs:  # the schedule takes its lr to zero when it stops training
            groups[-1]["train_epochs"] = train_epochs[name]
        if muon:  # Muon's momentum for the filters, SGD's for the rest
            use_muon = name == "filters"
            groups[-1].update(use_muon=use_muon, momentum=cfg.muon_momentum if use_muon else cfg.momentum)
    if muon:
        from cifarctl.training.muon import Muon

        return Muon(groups, lr=cfg.lr, momentum=cfg.muon_momentum, nesterov=cfg.nesterov,
                    renorm_every=cfg.muon_renorm_every, total_steps=cfg.schedule_steps or 1,
                    coefficients=cfg.ns_coefficients)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.Adam(groups, lr=cfg.lr)


def schedule_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """The schedule's length: the stored one, or all the run's epochs (a fraction of one ends at its step)."""
    return cfg.schedule_steps or max(math.ceil(cfg.epochs * steps_per_epoch), 1)


# How a ramp of n steps climbs: onecycle along half a cosine over n - 1 steps (torch's OneCycleLR), so
# its steepest step rises pi/2 times its average; the others along a straight line over n steps.
def _ramp_shape(kind: str) -> tuple[float, int]:
    return (math.pi / 2, 1) if kind == "onecycle" else (1.0, 0)


def ramp_reach(cfg: TrainConfig, ramp: int, start: float) -> float:
    """The fraction of the peak lr that a ramp of ``ramp`` steps may reach under ``cfg.min_ramp_steps``.

    A ramp of ``min_ramp_steps`` or more reaches the peak; a shorter one climbs no steeper than that
    one does at its steepest step, so it ends below the peak, and the whole schedule is scaled by that
    fraction (a short run's peak is lower, its shape unchanged).
    """
    _, offset = _ramp_shape(cfg.lr_schedule)
    if not cfg.min_ramp_steps or ramp >= cfg.min_ramp_steps:
        return 1.0
    return start + (1 - start) * max(ramp - offset, 0) / max(cfg.min_ramp_steps - offset, 1)


def max_ramp_rise(cfg: TrainConfig) -> float | None:
    """The largest rise of the lr in one step that ``cfg.min_ramp_steps`` allows, as a fraction of the
    peak (None: no bound): the steepest step of a ramp of exactly ``min_ramp_steps``."""
    if not cfg.min_ramp_steps:
        return None
    steepness, offset = _ramp_shape(cfg.lr_schedule)
    start = cfg.lr_start_factor if cfg.lr_start_factor is not None else START_FACTOR.get(cfg.lr_schedule, WARMUP_START)
    return (1 - start) * steepness / max(cfg.min_ramp_steps - offset, 1)


def _linear(optimizer: torch.optim.Optimizer, total: int, ramp: int, start: float,
            end: float, steps_per_epoch: int) -> lr_scheduler.LRScheduler:
    """Ramp (if any), then straight down to ``end`` x peak at the last step. A group that trains for
    ``train_epochs`` only (a model's declared group: airbench94's stem bias) reaches zero when it stops."""

    def main(step: int, horizon: int, floor: float) -> float:
        if step < ramp:
            return start + (1 - start) * step / ramp
        return max(floor, 1 - (1 - floor) * (step - ramp) / max(horizon - ramp, 1))

    def lr_lambda(group: dict[str, Any]) -> Callable[[int], float]:
        if group.get("train_epochs") is None:
            return lambda step: main(step, total, end)
        stops = _stop_step(group["train_epochs"], steps_per_epoch, ramp)
        return lambda step: main(step, stops, 0.0)

    return lr_scheduler.LambdaLR(optimizer, [lr_lambda(group) for group in optimizer.param_groups])


def _ramp_steps(cfg: TrainConfig, total: int, steps_per_epoch: int) -> int:
    share = cfg.warmup_fraction if cfg.warmup_fraction is not None else RAMP_FRACTION.get(cfg.lr_schedule, 0)
    ramp = round(cfg.warmup_epochs * steps_per_epoch) or round(share * total)
    return min(ramp, total - 1)


def _stop_step(train_epochs: float, steps_per_epoch: int, ramp: int) -> int:
    """The step from which a group that trains ``train_epochs`` has a learning rate of zero (after the ramp)."""
    return max(math.ceil(train_epochs * steps_per_epoch), ramp + 1)


def stop_steps(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> dict[int, int]:
    """The parameter groups the schedule stops (a model's declared group with ``train_epochs``, on the linear
    schedule), by index: the step from which their lr is zero, so that they can leave the backward pass."""
    if cfg.lr_schedule != "linear":
        return {}
    ramp = _ramp_steps(cfg, schedule_steps(cfg, steps_per_epoch), steps_per_epoch)
    return {index: _stop_step(group["train_epochs"], steps_per_epoch, ramp)
            for index, group in enumerate(optimizer.param_groups) if group.get("train_epochs") is not None}


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer,
                    steps_per_epoch: int) -> lr_scheduler.LRScheduler:
    """The run's schedule over ``schedule_steps(cfg, steps_per_epoch)`` optimizer steps."""
    total = schedule_steps(cfg, steps_per_epoch)
    kind = cfg.lr_schedule
    ramp = _ramp_steps(cfg, total, steps_per_epoch)
    start = cfg.lr_start_factor if cfg.lr_start_factor is not None else START_FACTOR.get(kind, WARMUP_START)
    end = cfg.lr_end_factor if cfg.lr_end_factor is not None else END_FACTOR.get(kind, 1.0)
    if kind == "linear":
        return _linear(optimizer, total, ramp, start, end, steps_per_epoch)
    # OneCycleLR needs two steps in each of its phases; shorter runs get a plain ramp (below).
    if kind == "onecycle" and total >= 4:
        ramp = min(max(ramp, 2), total - 2)
        reach = ramp_reach(cfg, ramp, start)
        sgd = isinstance(optimizer, torch.optim.SGD)
        top = cfg.momentum if sgd else optimizer.defaults["betas"][0]  # Adam cycles its beta1
        # Starts at start x the recipe's peak whatever the reach; peak and end are scaled by it.
        return lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] * reach for g in optimizer.param_groups], total_steps=total,
            pct_start=ramp / total, anneal_strategy="cos", div_factor=reach / start,
            final_div_factor=start / (end * reach), cycle_momentum=top > 0, max_momentum=top,
            base_momentum=top * ONECYCLE_MOMENTUM_LOW)
    reach = ramp_reach(cfg, ramp, start) if ramp else 1.0
    if reach < 1.0:  # a short ramp under --min-ramp-steps: every lr of the schedule scaled down alike
        for group in optimizer.param_groups:
            group["lr"] *= reach
        start /= reach  # the ramp still starts at start x the recipe's peak
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


def rebuild_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, peak_lrs: list[float],
                      steps_per_epoch: int, step: int) -> lr_scheduler.LRScheduler:
    """A fresh schedule of ``cfg.schedule_steps`` steps over the groups' ``peak_lrs``, advanced to ``step``
    (a time budget fixes the length after its first steps were taken at the schedule's first lr)."""
    for group, peak in zip(optimizer.param_groups, peak_lrs):
        group["lr"] = peak
        group.pop("initial_lr", None)
        if "total_steps" in group:  # Muon's rescaling interval follows the schedule's progress
            group["total_steps"] = cfg.schedule_steps
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch)
    with warnings.catch_warnings():  # "step() before optimizer.step()": the steps were taken before it existed
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(step):
            scheduler.step()
    return scheduler
