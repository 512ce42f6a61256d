"""Training to a time budget: measure this machine, then fix the schedule to the steps that fit.

The loop consults one ``TimeBudget``: it reports each step taken while measuring (``step_taken``),
and when enough are timed it gets the step time back and asks for the plan (``plan``), which it
then applies (the schedule's length, the final evaluation's TTA level).

Stopping a run when the clock runs out (Lightning's ``max_time``) leaves a triangle or onecycle
schedule mid-way, with the learning rate high and the weights noisy. Here the run first times its
first steps (at the schedule's first learning rate; they count towards the run) and one evaluation
batch, chooses the number of optimizer steps whose training,
evaluations and final (test-time augmented) evaluation fit in what is left of the budget, and
fixes the schedule to exactly that length: the run ends annealed, on time.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import nn

from cifarctl.device import autocast_dtype, sync_device
from cifarctl.evaluation import levels_upto, tta_logits, tta_views
from cifarctl.run.config import DEFAULT_TTA_FRACTION, SELECTIVE

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smh])")

# What a plan keeps back (``reserve_for``): process exit, the last checkpoint and metrics writes, and the
# drift of the step time over the run (measured on this CPU: the first steps after warm-up are typical).
RESERVE_S = 1.5
RESERVE_FRACTION = 0.02
CALIBRATION_STEPS = 3        # timed steps, after one untimed warm-up step
CALIBRATION_MIN_S = 1.0      # on fast devices, keep timing steps until this long has passed ...
CALIBRATION_MAX_STEPS = 50   # ... or this many
CALIBRATION_SHARE = 0.05     # on slow machines, stop measuring once this share of the budget is spent
EXTEND_SHARE = 0.02          # a run ahead of its plan by more than this share of its steps is lengthened
# Under a time budget the recipe's test-time augmentation stays unless its final evaluation would take
# more than this share of the budget (on a 2-core AVX2 CPU, airbench94's level 2 takes 150 s).
TTA_BUDGET_SHARE = 0.25


def parse_duration(text: str | float | int) -> float:
    """Seconds in ``"90s"``, ``"5m"``, ``"1h"``, ``"1h30m"`` or a plain number of seconds.

    Usage: ``parse_duration("5m") == 300.0``
    """
    from cifarctl.errors import UsageError

    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        spec = text.strip().lower().replace(" ", "")
        try:
            seconds = float(spec)
        except ValueError:
            parts = _DURATION.findall(spec)
            if not parts or "".join(n + u for n, u in parts) != spec:
                raise UsageError(f"--time-budget {text!r} is not a duration: write 90s, 5m, 1h or 1h30m") from None
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise UsageError(f"--time-budget {text!r} must be a positive duration (90s, 5m, 1h)")
    return seconds


def format_duration(seconds: float) -> str:
    """``298.4`` -> ``"4m58s"``; ``45`` -> ``"45s"``; ``3600`` -> ``"1h"``."""
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s" if secs else ""]
    return "".join(parts) or "0s"


@dataclass
class BudgetPlan:
    """How a time budget was spent: what was measured and the length chosen."""

    budget_s: float
    spent_s: float               # before training: start-up, data, model, calibration
    step_s: float                # seconds per optimizer step, measured
    eval_s: float                # one evaluation pass (per-epoch, no TTA), estimated
    final_eval_s: float          # the final evaluation (with the recipe's TTA), estimated
    reserve_s: float
    steps: int
    steps_per_epoch: int
    evaluations: int             # per-epoch evaluations before the final one
    tta: int | str = 0           # the test-time augmentation of the final evaluation
    note: str = ""               # what the budget changed besides the length (the TTA level)
    measured_steps: int = 0      # steps taken (at the schedule's first lr) while measuring, part of ``steps``
    eval_every: int = 0          # epochs between the per-epoch evaluations (0: none)
    # Steps up to ``phase_steps`` cost ``step_s``, later ones ``later_step_s`` (None: the same), where a
    # model's declared parameters stop training after its first epochs and the backward pass gets shorter.
    phase_steps: int = 0
    later_step_s: float | None = None

    @property
    def epochs(self) -> float:
        return self.steps / self.steps_per_epoch

    def cost(self, start: int, stop: int) -> float:
        """The planned seconds of steps ``start`` to ``stop`` (step counts), their per-epoch evaluations included."""
        if stop <= start:
            return 0.0
        early = max(min(stop, self.phase_steps) - start, 0)
        later_s = self.step_s if self.later_step_s is None else self.later_step_s
        evals = (evaluations_before_end(stop, self.steps_per_epoch, self.eval_every)
                 - evaluations_before_end(start, self.steps_per_epoch, self.eval_every))
        return early * self.step_s + (stop - start - early) * later_s + evals * self.eval_s

    def most_steps(self, start: int, seconds: float, slowdown: float = 1.0) -> int:
        """The largest step count ``n`` whose steps from ``start`` cost at most ``seconds`` at ``slowdown`` times the
        planned pace (``start`` when not one more fits)."""
        fastest = min(self.step_s, self.later_step_s or self.step_s) * slowdown
        low, high = start, start + max(int(seconds // max(fastest, 1e-12)), 0)
        while low < high:  # cost grows with the steps: bisect
            middle = (low + high + 1) // 2
            if self.cost(start, middle) * slowdown <= seconds:
                low = middle
            else:
                high = middle - 1
        return low

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "epochs": round(self.epochs, 4)}

    def describe(self, model: str) -> str:
        """``5m allows 4.2 epochs of airbench94 here (...)``"""
        evals = f", {self.evaluations} evaluations" if self.evaluations else ""
        note = f"; {self.note}" if self.note else ""
        return (f"{format_duration(self.budget_s)} allows {self.epochs:.2f} epochs of {model} here: "
                f"{self.steps:,} steps at {self.step_s:.3g} s each{evals}, {self.final_eval_s:.0f} s for the final "
                f"evaluation (TTA {self.tta}); start-up and {self.measured_steps} measured steps took {self.spent_s:.0f} s{note}")


def reserve_for(budget_s: float) -> float:
    """The seconds of ``budget_s`` a plan keeps back, the chooser's and the run's alike."""
    return RESERVE_S + RESERVE_FRACTION * budget_s


def tta_preference(accuracy: float, tta: int | str) -> tuple[float, float]:
    """How plans at several TTA levels rank: the highest predicted accuracy, and at equal predictions (to
    1e-6 of a point) the level of fewer views, which costs less. Usage: ``max(options, key=lambda p: tta_preference(...))``"""
    return round(accuracy, 6), -tta_views(tta)


def evaluations_before_end(steps: int, steps_per_epoch: int, eval_every: int) -> int:
    """Per-epoch evaluations a run of ``steps`` makes before its final one (at epoch ends that are not the last)."""
    if eval_every <= 0 or steps <= steps_per_epoch:
        return 0
    full_epochs_before_end = (steps - 1) // steps_per_epoch
    return full_epochs_before_end // eval_every


def plan_steps(budget_s: float, spent_s: float, step_s: float, steps_per_epoch: int, eval_s: float = 0.0,
               final_eval_s: float = 0.0, eval_every: int = 0, reserve_s: float | None = None,
               done_steps: int = 0, phases: tuple[int, float] | None = None) -> BudgetPlan:
    """The run's length in optimizer steps: the ``done_steps`` already taken (in ``spent_s``) and the most
    steps whose training and evaluations fit in what is left of ``budget_s``. ``phases``: ``(steps, ratio)``,
    steps after the first ``steps`` cost ``ratio`` times ``step_s``.

    Usage: ``plan_steps(300, spent_s=6, step_s=1.2, steps_per_epoch=49, final_eval_s=30).steps``
    """
    from cifarctl.errors import UsageError

    if step_s <= 0 or steps_per_epoch < 1:
        raise ValueError("plan_steps needs a positive step time and steps per epoch")
    reserve = reserve_for(budget_s) if reserve_s is None else reserve_s
    available = budget_s - spent_s - reserve - final_eval_s
    phase_steps, ratio = phases or (0, 1.0)
    plan = BudgetPlan(budget_s, spent_s, step_s, eval_s, final_eval_s, reserve, done_steps, steps_per_epoch, 0,
                      measured_steps=done_steps, eval_every=eval_every, phase_steps=phase_steps,
                      later_step_s=step_s * ratio if phases else None)
    if available < 0:
        raise UsageError(f"a time budget of {format_duration(budget_s)} is too short here: start-up and the first "
                         f"{done_steps} steps took {spent_s:.0f} s and the final evaluation takes about {final_eval_s:.0f} s; "
                         "give at least "
                         f"{format_duration(math.ceil((spent_s + reserve + final_eval_s + 10 * step_s) * 1.2))}")
    plan.steps = plan.most_steps(done_steps, available)
    if plan.steps < 1:
        need = spent_s + reserve + final_eval_s + step_s
        raise UsageError(f"a time budget of {format_duration(budget_s)} leaves no time to train here: start-up "
                         f"took {spent_s:.0f} s, a step takes {step_s:.2g} s and the final evaluation about "
                         f"{final_eval_s:.0f} s; give at least {format_duration(math.ceil(need * 1.5))}")
    plan.evaluations = evaluations_before_end(plan.steps, steps_per_epoch, eval_every)
    return plan


class Stopwatch:
    """Seconds since a start, synchronising the device first so queued GPU work is counted."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.sync()
        self.started = time.perf_counter()

    def sync(self) -> None:
        sync_device(self.device)

    def seconds(self) -> float:
        self.sync()
        return time.perf_counter() - self.started


def choose_tta(level: int | str, batch_s: dict[int | str, float], batches: int,
               budget_s: float) -> tuple[int | str, str]:
    """The test-time augmentation a time budget can afford: the recipe's ``level``, unless its final evaluation
    would take more than ``TTA_BUDGET_SHARE`` of the budget; then the dearest level that fits (at least 0).

    Returns the level and a note for the user ("" when the recipe's level stays).
    """
    affordable = [lv for lv in reversed(levels_upto(level)) if batch_s[lv] * batches <= TTA_BUDGET_SHARE * budget_s]
    chosen = affordable[0] if affordable else 0
    if chosen == level:
        return level, ""
    return chosen, (f"test-time augmentation {level} would take {batch_s[level] * batches:.0f} s of the budget; "
                    f"the final evaluation uses level {chosen} ({batch_s[chosen] * batches:.0f} s) and training the rest")


def choose_tta_by_frontier(plan_at: Callable[[int | str], BudgetPlan], level: int | str,
                           accuracy: Callable[[float, int | str], float]) -> BudgetPlan:
    """The plan, among the TTA levels up to ``level`` (``levels_upto``: selective among them where the recipe
    asks for 2), whose predicted accuracy is highest: a level's evaluation costs the steps its time would
    have trained, and the frontier says what those steps were worth.

    ``plan_at(tta)`` plans the run with that final level (a level that leaves no time to train is
    skipped); ``accuracy(epochs, tta)`` is the frontier's prediction. At equal predictions, the lower level.
    """
    from cifarctl.errors import UsageError

    options: list[tuple[float, BudgetPlan]] = []
    failure: UsageError | None = None
    for tta in levels_upto(level):
        try:
            plan = plan_at(tta)
        except UsageError as exc:
            failure = failure or exc
            continue
        options.append((accuracy(plan.epochs, tta), plan))
    if not options:
        assert failure is not None
        raise failure
    best_acc, best = max(options, key=lambda o: tta_preference(o[0], o[1].tta))
    if best.tta != level:
        at_level = next(((acc, plan) for acc, plan in options if plan.tta == level), None)
        than = (f", against {at_level[0]:.1f}% with TTA {level} ({at_level[1].epochs:.2f} epochs)"
                if at_level else f" (TTA {level} leaves no time to train)")
        best.note = (f"the final evaluation uses TTA {best.tta}: with the {best.epochs:.2f} epochs it leaves, "
                     f"the frontier predicts {best_acc:.1f}%{than}")
    return best


def time_eval_levels(model: nn.Module, batch: torch.Tensor, tta: int | str, amp: bool,
                     fraction: float = DEFAULT_TTA_FRACTION) -> dict[int | str, float]:
    """Seconds per evaluation batch (``batch``, one of the test loader's) at each test-time augmentation level.

    Level 0 is timed on a whole batch, after a first pass that builds the kernels for its shape
    (a 100-image sample underestimated a 500-image batch by 1.3x on a CPU). The dearest level the run
    may use costs more than its views (its flips and shifts: level 2 is 6.9x level 0 on a CPU, not 6x),
    so its ratio to level 0 is timed on 100 images; a level between is scaled by its views, and the
    selective level is level 0 plus level 2's other views for its ``fraction`` of the images.
    """
    device = batch.device
    cast = autocast_dtype(device, amp)
    measured = 2 if tta == SELECTIVE else tta

    def timed(images: torch.Tensor, level: int) -> float:
        watch = Stopwatch(device)
        tta_logits(model, images, level)
        return watch.seconds()

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), torch.autocast(device.type, dtype=cast or torch.float32,
                                                    enabled=cast is not None):
            # The larger of two timings each: one pass is noisy, and running over the budget is worse
            # than a step less (one pass under-estimated a 10,000-image TTA 2 evaluation by a third).
            tta_logits(model, batch, 0)
            level0 = max(timed(batch, 0), timed(batch, 0))
            ratio = 1.0
            if measured:
                sample = batch[:100]
                tta_logits(model, sample, 0)
                ratio = max(timed(sample, measured) / max(timed(sample, 0), 1e-9) for _ in range(2))
    finally:
        model.train(was_training)
    per_view = level0 * ratio / tta_views(measured)
    levels: dict[int | str, float] = {level: level0 if level == 0 else level0 * ratio if level == measured
                                      else per_view * tta_views(level) for level in (0, 1, 2)}
    levels[SELECTIVE] = level0 + fraction * (levels[2] - level0)  # the unsure images' plain pass is reused
    return levels


@dataclass(frozen=True)
class RunShape:
    """What a plan must pay for besides the steps: the loaders' lengths and the evaluations asked for."""

    steps_per_epoch: int
    test_batches: int
    val_batches: int | None      # with --val-split: the held-out images' batches (per-epoch evaluations)
    evaluate: bool
    eval_every: int
    tta: int | str               # the recipe's final test-time augmentation level


class TimeBudget:
    """The first steps of a run measure this machine; then ``plan`` fixes the run's length.

    While it measures, the loop holds the lr at the schedule's first value (the same whatever the
    length), so nothing is thrown away: the steps count towards the plan. Under DDP every rank
    measures a fixed number of steps, so all of them plan at the same step.
    ``accuracy``, the shipped frontier's prediction for the run's model and recipe, chooses the final
    TTA level by what it buys (``choose_tta_by_frontier``).
    ``phases``: ``(epochs, ratio)``, steps after the first ``epochs`` cost ``ratio`` times the measured ones
    (the frontier's, where a model's declared parameters stop training early on).
    Usage: ``budget = TimeBudget(300, time.monotonic(), device)``, then after each step
    ``step_s = budget.step_taken()``; when it is not None, ``budget.plan(step_s, ...)``.
    """

    def __init__(self, seconds: float, clock: float, device: Any, distributed: bool = False,
                 accuracy: Callable[[float, int], float] | None = None,
                 phases: tuple[float, float] | None = None) -> None:
        self.seconds, self.clock, self.device, self.distributed = seconds, clock, device, distributed
        self.accuracy = accuracy  # (epochs, TTA level) -> predicted test accuracy: the run's frontier, if shipped
        self.phases = phases      # (epochs, cost ratio): steps after the first epochs cost that ratio of the measured
        self.watch = Stopwatch(device)
        self.measured_steps, self.first_step_s = 0, 0.0
        self.planned: BudgetPlan | None = None     # the plan in force (refitted, perhaps)
        self.first_plan: BudgetPlan | None = None  # the plan made from the measured steps
        self.planned_at: tuple[float, int] = (0.0, 0)  # (time.monotonic(), global step) when it was planned
        self.last_check: tuple[float, int] | None = None  # the same at the last refit

    @property
    def measuring(self) -> bool:
        """Still timing the first steps: the run's length is not fixed yet."""
        return self.planned is None

    def step_taken(self) -> float | None:
        """After each step: the seconds a step takes once enough are timed (then plan), else None."""
        self.measured_steps += 1
        if self.measured_steps == 1:  # the first step builds kernels and caches: not typical
            self.first_step_s = self.watch.seconds()
            self.watch = Stopwatch(self.device)
            over = time.monotonic() - self.clock > self.seconds
            return self.first_step_s if over and not self.distributed else None  # over already: says so now
        timed, seconds = self.measured_steps - 1, self.watch.seconds()
        enough = timed >= CALIBRATION_STEPS and (self.distributed or seconds >= CALIBRATION_MIN_S)
        # A slow machine stops measuring after a twentieth of the budget: those steps run at the held lr.
        slow = not self.distributed and seconds >= CALIBRATION_SHARE * self.seconds
        if enough or slow or timed >= CALIBRATION_MAX_STEPS:  # under DDP a fixed count
            return seconds / timed
        return None

    def step_time_so_far(self) -> float:
        """The step time measured up to now (a run asked to stop while measuring plans with it)."""
        timed = self.measured_steps - 1
        return self.watch.seconds() / timed if timed else self.first_step_s

    def plan(self, step_s: float, level_s: dict[int | str, float], shape: RunShape, done_steps: int) -> BudgetPlan:
        """The run's length and final TTA level, from the step time and each TTA level's seconds per batch.

        With a frontier for the run's model and recipe (``accuracy``), the level is the one whose predicted
        accuracy, after the steps the rest of its time allows, is highest (``choose_tta_by_frontier``);
        without one, the recipe's level unless it takes more than ``TTA_BUDGET_SHARE`` of the budget.
        """
        spent = time.monotonic() - self.clock
        phases = None
        if self.phases is not None:  # measured in the first phase: later steps at the frontier's ratio to them
            phases = (math.ceil(self.phases[0] * shape.steps_per_epoch), self.phases[1])

        def plan_at(tta: int | str) -> BudgetPlan:
            per_epoch = shape.val_batches if shape.val_batches is not None else shape.test_batches
            eval_s = level_s[0] * per_epoch if shape.evaluate and shape.eval_every else 0.0
            final_eval_s = level_s[tta] * shape.test_batches
            if shape.val_batches is not None:  # the val pass at the end, and last.pt and best.pt on the test set
                final_eval_s = eval_s + 2 * final_eval_s
            plan = plan_steps(self.seconds, spent, step_s, shape.steps_per_epoch, eval_s, final_eval_s,
                              shape.eval_every if shape.evaluate else 0, done_steps=done_steps, phases=phases)
            plan.tta = tta
            return plan

        if self.accuracy is not None and shape.tta != 0:
            plan = choose_tta_by_frontier(plan_at, shape.tta, self.accuracy)
        else:
            tta, note = choose_tta(shape.tta, level_s, shape.test_batches, self.seconds)
            plan = plan_at(tta)
            plan.note = note
        self.planned, self.first_plan, self.planned_at = plan, plan, (time.monotonic(), done_steps)
        return plan

    def refit(self, global_step: int) -> BudgetPlan | None:
        """At an epoch's end: a new length when the run, at the pace it has kept since it was planned
        (evaluations and saves included), would end past the budget, or well before it; None while on time.

        A shared machine can slow down after the first steps were timed (seen here: a fifth to a third
        slower from the third epoch of a small model, by other work on the host), and a budget is a promise
        about the end: the plan shortens. It also lengthens when the run is ahead by more than
        ``EXTEND_SHARE`` of its steps (steps got cheaper than planned after the first were timed), since a
        budget's minutes are there to be trained. The pace is the plan's own, phases included (``phases``:
        a model whose first layer stops training after a few epochs runs its later steps faster), and the
        one it goes on with is the slower of the whole run's since the plan and the last epoch's.
        """
        plan, first = self.planned, self.first_plan  # in force; and as measured, not as refitted
        since, at_step = self.planned_at
        if plan is None or first is None or global_step <= at_step or global_step >= plan.steps:
            return None
        now = time.monotonic()
        # The pace against the plan's (evaluations and saves included): since the plan, or over the last
        # epoch if slower there.
        slowdown = (now - since) / max(first.cost(at_step, global_step), 1e-9)
        last_time, last_step = self.last_check or (since, at_step)
        if global_step > last_step:
            slowdown = max(slowdown, (now - last_time) / max(first.cost(last_step, global_step), 1e-9))
        self.last_check = (now, global_step)
        final_s = first.final_eval_s * max(slowdown, 1.0)
        left = self.seconds - (now - self.clock) - plan.reserve_s - final_s
        fits = max(first.most_steps(global_step, left, slowdown), global_step + 1)
        behind = first.cost(global_step, plan.steps) * slowdown > left
        ahead = fits - plan.steps > max(EXTEND_SHARE * plan.steps, 1)
        if not (behind or ahead):
            return None
        over = "late" if behind else "early"
        refitted = BudgetPlan(**{**asdict(plan), "steps": fits, "final_eval_s": final_s,
                                 "note": f"refitted at step {global_step}: steps take {slowdown:.2f}x the time first "
                                         f"measured, so the {plan.steps}-step plan would have ended {over}"})
        refitted.evaluations = evaluations_before_end(fits, plan.steps_per_epoch, plan.eval_every)
        self.planned = refitted
        return refitted
