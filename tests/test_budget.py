"""Training to a time budget: the arithmetic, the TTA choice, and a run fitted, resumed and recorded."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

import importlib

from cifarctl.engine import TrainConfig, TrainingInterrupted, resume, train
from cifarctl.training.plan import evaluations_before_end, format_duration, parse_duration, plan_steps
from cifarctl.training.tta_choice import choose_tta
from cifarctl.training.schedule import build_optimizer, build_scheduler
from cifarctl.errors import UsageError
from cifarctl.models import create_model

from conftest import StopAfterAdvances, tiny_dataset

budget_mod = importlib.import_module("cifarctl.training.budget")
tta_choice_mod = importlib.import_module("cifarctl.training.tta_choice")


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("5m", 300), ("1h", 3600), ("1h30m", 5400),
                                           ("2.5m", 150), ("300", 300), (" 10M ", 600)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5 minutes", "m5", "0s", "-5", "", "5x", "1h 1q"])
def test_bad_durations_are_one_line_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="--time-budget"):
        parse_duration(text)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (298.4, 45, 3600, 5430)] == ["4m58s", "45s", "1h", "1h30m30s"]


def test_plan_fills_what_is_left_with_steps() -> None:
    # 300 s, 10 s spent, 30 s for the final evaluation, nothing kept back: 260 s at 2 s a step.
    plan = plan_steps(300, spent_s=10, step_s=2.0, steps_per_epoch=49, final_eval_s=30, reserve_s=0)
    assert plan.steps == 130 and plan.evaluations == 0 and plan.epochs == pytest.approx(130 / 49)


def test_plan_pays_for_the_evaluations_it_takes() -> None:
    # Evaluating after each full epoch (5 s) costs steps: 2n + 5 * ((n - 1) // 49) <= 260 -> n = 125.
    plan = plan_steps(300, spent_s=10, step_s=2.0, steps_per_epoch=49, eval_s=5, final_eval_s=30, eval_every=1,
                      reserve_s=0)
    assert plan.steps == 125 and plan.evaluations == 2
    assert evaluations_before_end(49, 49, 1) == 0 and evaluations_before_end(50, 49, 1) == 1
    assert evaluations_before_end(99, 49, 2) == 1 and evaluations_before_end(500, 49, 0) == 0


def test_plan_counts_the_steps_already_taken_and_keeps_a_reserve() -> None:
    plan = plan_steps(300, spent_s=10, step_s=2.0, steps_per_epoch=49, final_eval_s=30, done_steps=4)
    assert plan.reserve_s == pytest.approx(1.5 + 0.02 * 300)
    assert plan.steps == 4 + int((300 - 10 - plan.reserve_s - 30) // 2.0)


def test_a_budget_too_short_says_how_long_to_give() -> None:
    with pytest.raises(UsageError, match="too short here.*give at least"):
        plan_steps(60, spent_s=20, step_s=2.0, steps_per_epoch=49, final_eval_s=45, done_steps=2)
    with pytest.raises(UsageError, match="no time to train"):
        plan_steps(60, spent_s=20, step_s=50.0, steps_per_epoch=49, final_eval_s=5)


def test_tta_stays_unless_it_would_eat_a_quarter_of_the_budget() -> None:
    per_batch = {0: 1.0, 1: 2.2, 2: 7.0, "selective": 2.75}  # seconds per evaluation batch at each level
    assert choose_tta(2, per_batch, 20, 1000) == (2, "")                  # 140 s of 1000: kept
    level, note = choose_tta(2, per_batch, 20, 300)                       # 140 s of 300: too much
    assert level == "selective" and "level selective (55 s)" in note      # level 2 for the unsure quarter
    level, note = choose_tta(2, {**per_batch, "selective": 4.0}, 20, 300)  # 80 s of 300: too much as well
    assert level == 1 and "level 1 (44 s)" in note
    assert choose_tta(2, per_batch, 20, 60)[0] == 0                       # not even level 1 fits: 0
    assert choose_tta(0, per_batch, 20, 10) == (0, "")


class FixedStopwatch:
    """Every measured interval takes ``SECONDS``: the plan then depends on the arithmetic alone."""

    SECONDS = 10.0

    def __init__(self, device: object) -> None:
        pass

    def seconds(self) -> float:
        return self.SECONDS


def fix_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps and evaluations "take" ``FixedStopwatch.SECONDS`` while measured; the plan is then never
    lengthened by the real pace (tiny steps far faster than measured would stretch it)."""
    monkeypatch.setattr(budget_mod, "Stopwatch", FixedStopwatch)
    monkeypatch.setattr(tta_choice_mod, "Stopwatch", FixedStopwatch)
    monkeypatch.setattr(budget_mod, "EXTEND_SHARE", float("inf"))


BUDGET_CFG = dict(model="resnet50", batch_size=50, device="cpu", eval_batch_size=50, log_every=1, amp=False,
                  optimizer="sgd", lr=0.05, lr_schedule="triangle", eval_every=0, time_budget=100.0)


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_budget_run_fixes_its_length_and_schedule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fix_the_clock(monkeypatch)
    notes: list[str] = []
    result = train(TrainConfig(**BUDGET_CFG), tiny_dataset(), tmp_path / "run", notify=notes.append)
    plan = result.budget
    assert plan is not None and notes and notes[0].startswith("1m40s allows")
    # The measuring stopped after one timed step (10 s >= 5% of 100 s), so 2 steps were taken; the rest is arithmetic.
    assert plan["measured_steps"] == 2 and plan["step_s"] == 10.0 and plan["final_eval_s"] == 10.0
    expected = 2 + int((100 - plan["spent_s"] - plan["reserve_s"] - plan["final_eval_s"]) // 10.0)
    assert plan["steps"] == expected == result.global_step
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["schedule_steps"] == config["max_steps"] == expected and config["budget_plan"]["steps"] == expected
    assert config["epochs"] == -(-expected // 4) and config["time_budget"] == 100.0
    # The lr: held at the schedule's first value while measuring, then the schedule of `expected` steps.
    cfg = TrainConfig(**{**BUDGET_CFG, "time_budget": None, "schedule_steps": expected})
    opt = build_optimizer(cfg, create_model("resnet50"))
    sched = build_scheduler(cfg, opt, 4)
    reference = []
    for _ in range(expected):
        reference.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # Each step record holds the lr of the next step: after step 1 the held first value; from step 2,
    # when the length was fixed, the new schedule's, advanced to the step reached.
    logged = {r["global_step"]: r["lr"] for r in _records(tmp_path / "run") if r["type"] == "step"}
    assert logged[1] == pytest.approx(reference[0])
    for step in range(2, expected):
        assert logged[step] == pytest.approx(reference[step]), step
    assert [r["type"] for r in _records(tmp_path / "run")].count("budget") == 1


def test_a_resumed_budget_run_keeps_its_length(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fix_the_clock(monkeypatch)
    data, stop = tiny_dataset(), threading.Event()
    with pytest.raises(TrainingInterrupted):
        train(TrainConfig(**BUDGET_CFG), data, tmp_path / "run", progress=StopAfterAdvances(stop, 4), stop=stop)
    chosen = json.loads((tmp_path / "run" / "config.json").read_text())["schedule_steps"]
    assert chosen > 4
    result = resume(tmp_path / "run", data)
    assert result.global_step == chosen and result.budget and result.budget["steps"] == chosen
    assert [r["type"] for r in _records(tmp_path / "run")].count("budget") == 1  # planned once, not again


def test_stopping_while_measuring_fixes_the_length_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fix_the_clock(monkeypatch)
    data, stop = tiny_dataset(), threading.Event()
    stop.set()  # asked to stop at the first step, before the measurement is complete
    with pytest.raises(TrainingInterrupted):
        train(TrainConfig(**BUDGET_CFG), data, tmp_path / "run", stop=stop)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["schedule_steps"] == config["max_steps"] and config["budget_plan"]["measured_steps"] == 1
    assert resume(tmp_path / "run", data).global_step == config["schedule_steps"]


def test_time_budget_is_refused_with_max_steps() -> None:
    with pytest.raises(UsageError, match="drop --max-steps"):
        TrainConfig(**{**BUDGET_CFG, "max_steps": 10})


def test_cli_time_budget_refuses_epochs_and_reports_the_plan(cached, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from cifarctl.cli import app

    result = CliRunner().invoke(app, ["train", "resnet50", "--time-budget", "5m", "--epochs", "2", "--offline"])
    assert result.exit_code == 2 and "drop --epochs" in result.output
    result = CliRunner().invoke(app, ["train", "resnet50", "--time-budget", "five", "--offline"])
    assert result.exit_code == 2 and "not a duration" in result.output
    fix_the_clock(monkeypatch)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "resnet50", "--time-budget", "100s", "--device", "cpu", "--offline",
                                      "--batch-size", "50", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert "1m40s allows" in result.output and "time budget 1m40s:" in result.output
    assert json.loads((out / "config.json").read_text())["budget_plan"]["steps"] >= 2



class Labels(StopAfterAdvances):
    """Records the progress bar's descriptions (never stops the run)."""

    def __init__(self) -> None:
        super().__init__(threading.Event(), 10**9)
        self.labels: list[str] = []

    def start(self, description: str, total: float | None, unit: str = "") -> None:
        self.labels.append(description)

    def relabel(self, description: str) -> None:
        self.labels.append(f"relabel: {description}")


def test_the_progress_bar_shows_the_planned_length(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fix_the_clock(monkeypatch)
    progress = Labels()
    result = train(TrainConfig(**BUDGET_CFG), tiny_dataset(), tmp_path / "run", progress=progress)
    planned = -(-result.budget["steps"] // 4)
    assert planned != TrainConfig(**BUDGET_CFG).epochs  # the recipe's length is not the plan's
    epochs = [label for label in progress.labels if "epoch" in label]
    assert epochs[:2] == ["epoch 1 (measuring this machine)", f"relabel: epoch 1/{planned}"]
    assert epochs[2] == f"epoch 2/{planned}" and epochs[-1] == f"epoch {planned}/{planned}"


def planned_at_10s(monkeypatch: pytest.MonkeyPatch, budget_s: float, eval_every: int):
    """A budget planned 10 s in, at 1 s a step of 10 an epoch after 2 steps (2 test batches of 1 s), on a clock
    the test moves (``now[0]``)."""
    now = [0.0]
    monkeypatch.setattr(budget_mod.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(budget_mod, "Stopwatch", FixedStopwatch)
    budget = budget_mod.TimeBudget(budget_s, clock=0.0, device="cpu")
    now[0] = 10.0
    shape = budget_mod.RunShape(steps_per_epoch=10, test_batches=2, val_batches=None, evaluate=True,
                                eval_every=eval_every, tta=0)
    return budget, budget.plan(1.0, {0: 1.0, 1: 2.0, 2: 6.0}, shape, done_steps=2), now


def test_one_slow_epoch_costs_its_lost_time_not_the_rest_of_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    """A transient (one epoch at 3x, a busy neighbour) shortens the plan by the seconds it took, no more: the
    steps to come are planned at the run's usual pace, and the run still ends on time."""
    budget, plan, now = planned_at_10s(monkeypatch, 100.0, eval_every=0)
    now[0] = 20.0
    assert budget.refit(12) is None  # 10 steps in 10 s: on the plan's pace
    now[0] = 50.0
    refitted = budget.refit(22)  # 10 steps in 30 s: the machine was busy
    assert refitted is not None and "1.00x the time first measured" in refitted.note
    assert refitted.steps == 22 + int((100 - 50 - plan.reserve_s - plan.final_eval_s) // 1.0)
    assert refitted.final_eval_s == plan.final_eval_s
    now[0] = 60.0
    assert budget.refit(32) is None  # quick again: the plan holds
    # Where the old rule (the slower of the pace since the plan and the last epoch's) would have planned the
    # rest at 3x: 22 + 15 steps, a run ending 30 s early.
    assert refitted.steps > 22 + int((100 - 50 - plan.reserve_s - 3 * plan.final_eval_s) // 3.0) + 20


def test_two_slow_epochs_are_a_trend_and_a_quick_machine_lengthens_again(monkeypatch: pytest.MonkeyPatch) -> None:
    budget, plan, now = planned_at_10s(monkeypatch, 100.0, eval_every=0)
    assert not budget.measuring and plan.steps == 2 + int((100 - 10 - plan.reserve_s - 2.0) // 1.0)
    now[0] = 20.0
    assert budget.refit(12) is None
    now[0] = 40.0
    first = budget.refit(22)  # one epoch at 2 s a step: its lost time only
    assert first is not None and "1.00x" in first.note
    now[0] = 60.0
    refitted = budget.refit(32)  # a second one: the machine is slower now
    assert refitted is not None and refitted.steps < first.steps
    assert "2.00x the time first measured" in refitted.note and "ended late" in refitted.note
    assert refitted.final_eval_s == pytest.approx(2 * plan.final_eval_s)  # it slows down alike
    assert refitted.steps == 32 + int((100 - 60 - plan.reserve_s - refitted.final_eval_s) // 2.0)
    now[0] = 65.0
    budget.refit(42)  # one quick epoch (0.5 s a step) after two slow ones: still planned at 2x
    assert budget.planned.note.endswith(("late", "early")) and "2.00x" in budget.planned.note
    now[0] = 70.0
    longer = budget.refit(52)  # a second quick one: the plan cut while slow is lengthened
    assert longer is not None and budget.planned is longer and longer.steps > refitted.steps
    assert "0.50x the time first measured" in longer.note and "ended early" in longer.note
    assert longer.steps == plan.most_steps(52, 100 - 70 - plan.reserve_s - plan.final_eval_s, 0.5)


def test_a_refitted_plan_counts_the_evaluations_the_run_makes(monkeypatch: pytest.MonkeyPatch) -> None:
    """--eval-every 3: a refit counts one evaluation every third epoch, as the plan did (not one every epoch)."""
    budget, plan, now = planned_at_10s(monkeypatch, 1000.0, eval_every=3)
    assert plan.evaluations == budget_mod.evaluations_before_end(plan.steps, 10, 3) > 0
    now[0] += 2 * plan.cost(2, 22)  # two epochs (an evaluation among them) took twice the plan's time
    budget.refit(22)
    now[0] += 2 * plan.cost(22, 32)
    refitted = budget.refit(32)
    assert refitted is not None and refitted.steps < plan.steps
    assert "2.00x the time first measured" in refitted.note and "ended late" in refitted.note
    every_third = budget_mod.evaluations_before_end(refitted.steps, 10, 3)
    assert refitted.evaluations == every_third != budget_mod.evaluations_before_end(refitted.steps, 10, 1)
    assert refitted.steps == plan.most_steps(32, 1000 - now[0] - plan.reserve_s - 2 * plan.final_eval_s, 2.0)


def test_a_run_on_its_plans_pace_with_an_evaluation_every_epoch_is_never_refitted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The check at an epoch's end comes after that epoch's evaluation: it is in the time measured since the last
    check and not in what is left to plan. (Counted the other way, each check cut the plan by an evaluation and
    a 2-minute run ended 10 s early.)"""
    budget, plan, now = planned_at_10s(monkeypatch, 100.0, eval_every=1)
    assert plan.eval_s == 2.0 and plan.evaluates_at(10) and not plan.evaluates_at(12)
    for end in (10, 20, 30, 40):
        now[0] += (end - max(end - 10, 2)) * plan.step_s + plan.eval_s  # the epoch's steps, then its evaluation
        assert budget.refit(end) is None, end
    assert budget.planned is plan
    # the rest of the plan then takes the time left, less the final evaluation and the reserve, to the step
    rest = plan.cost(40, plan.steps) - plan.eval_s
    assert 0 <= 100 - now[0] - rest - plan.final_eval_s - plan.reserve_s < plan.step_s + plan.eval_s
