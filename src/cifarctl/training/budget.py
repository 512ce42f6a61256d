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
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from cifarctl.device import Stopwatch
from cifarctl.run.config import DEFAULT_TTA_FRACTION
from cifarctl.training.plan import BudgetPlan, evaluations_before_end, plan_steps
from cifarctl.training.tta_choice import choose_tta, choose_tta_by_frontier

CALIBRATION_STEPS = 3        # timed steps, after one untimed warm-up step
CALIBRATION_MIN_S = 1.0      # on fast devices, keep timing steps until this long has passed ...
CALIBRATION_MAX_STEPS = 50   # ... or this many
CALIBRATION_SHARE = 0.05     # on slow machines, stop measuring once this share of the budget is spent
EXTEND_SHARE = 0.02          # a run ahead of its plan by more than this share of its steps is lengthened
PACE_WINDOWS = 3             # the refit plans with the lower median of the last this many epochs' paces

@dataclass(frozen=True)
class RunShape:
    """What a plan must pay for besides the steps: the loaders' lengths and the evaluations asked for."""

    steps_per_epoch: int
    test_batches: int
    val_batches: int | None      # with --val-split: the held-out images' batches (per-epoch evaluations)
    evaluate: bool
    eval_every: int
    tta: int | str               # the recipe's final test-time augmentation level
    tta_fraction: float = DEFAULT_TTA_FRACTION  # with selective TTA: the share of images looked at again


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
        self.paces: list[float] = [1.0]  # each epoch's pace since the plan, against the plan's (1.0: as measured)

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
            plan = choose_tta_by_frontier(plan_at, shape.tta, self.accuracy, shape.tta_fraction)
        else:
            tta, note = choose_tta(shape.tta, level_s, shape.test_batches, self.seconds)
            plan = plan_at(tta)
            plan.note = note
        self.planned, self.first_plan, self.planned_at = plan, plan, (time.monotonic(), done_steps)
        return plan

    def refit(self, global_step: int) -> BudgetPlan | None:
        """At an epoch's end: a new length when the run, at the pace it keeps, would end past the budget, or
        well before it; None while on time.

        A shared machine slows down for a while (seen here: a busy minute made a 2-minute run's steps 1.4x
        slower), and a budget is a promise about the end: the time already lost is read off the clock, and
        the steps still to come are planned at the run's typical pace, the lower median of its last
        ``PACE_WINDOWS`` epochs' (the measured steps' pace standing for the first): one slow epoch is a
        transient, two in three a trend. So a plan is not cut for the rest of the run on one slow window,
        and one cut while the machine was slow is lengthened again when it is quick (``EXTEND_SHARE``: a
        budget's minutes are there to be trained). The pace is the plan's own, phases included (a model
        whose first layer stops training after a few epochs runs its later steps faster).
        """
        plan, first = self.planned, self.first_plan  # in force; and as measured, not as refitted
        if plan is None or first is None or global_step >= plan.steps:
            return None
        now = time.monotonic()
        last_time, last_step = self.last_check or self.planned_at
        if global_step <= last_step:
            return None
        # ``cost(a, b)`` counts the evaluations at the epoch ends from a to before b; this one is called after
        # the evaluation at ``global_step`` (if one was due): the window since the last check holds that one and
        # not the one at its start, and what is left to plan holds neither.
        paid = first.eval_s if first.evaluates_at(global_step) else 0.0
        before = first.eval_s if first.evaluates_at(last_step) else 0.0
        self.paces.append((now - last_time) / max(first.cost(last_step, global_step) - before + paid, 1e-9))
        self.last_check = (now, global_step)
        slowdown = statistics.median_low(self.paces[-PACE_WINDOWS:])
        final_s = first.final_eval_s * max(slowdown, 1.0)
        left = self.seconds - (now - self.clock) - plan.reserve_s - final_s
        fits = max(first.most_steps(global_step, left + paid * slowdown, slowdown), global_step + 1)
        behind = (first.cost(global_step, plan.steps) - paid) * slowdown > left
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
