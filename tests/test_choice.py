"""A time budget that chooses the model: the frontier's prediction, the choice, the TTA rule, the family's
members, and a chosen run recorded and resumed."""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cifarctl.cli import app
from cifarctl.errors import UsageError
from cifarctl.models import create_model
from cifarctl.models.registry import family_of, is_family
from cifarctl.run.config import TrainConfig
from cifarctl.models.user import resolve_model
from cifarctl.trace import inspect_model
from cifarctl.training import Trainer, request_run, resume, train
from cifarctl.training.budget import RunShape
from cifarctl.training.plan import BudgetPlan
from cifarctl.training.tta_choice import choose_tta_by_frontier
from cifarctl.training.choice import Probe, choose, predict, probe_candidate
from cifarctl.training.frontier import CHANCE, Candidate, Frontier, frontier_candidate, shipped_frontier
from cifarctl.training.schedule import build_optimizer

from conftest import tiny_dataset
from test_budget import fix_the_clock

choice_mod = importlib.import_module("cifarctl.training.choice")
budget_mod = importlib.import_module("cifarctl.training.budget")
MEMBERS = ("airbench94", "airbench94_half", "airbench94_quarter")


def points(*rows: tuple[float, float, float, float]) -> tuple:
    return tuple((e, {0: a0, 1: a1, 2: a2}) for e, a0, a1, a2 in rows)


# A made-up frontier with the shape the measured one has: the wide net is better per epoch, the narrow
# one four times cheaper per image; TTA buys a point or two. Times are seconds per image "there".
FRONTIER = Frontier(
    measured_on="a test machine",
    eval_s_per_image={"airbench94": {0: 3e-4, 1: 6e-4, 2: 2e-3}, "airbench94_half": {0: 1e-4, 1: 2e-4, 2: 7e-4},
                      "airbench94_quarter": {0: 5e-5, 1: 1e-4, 2: 3.5e-4}},
    startup_s=5.0,
    candidates=(
        Candidate("airbench94", "paper", 2.6e-3, points((0.5, 60, 61, 62), (2.0, 80, 81, 82), (8.0, 90, 91, 92))),
        Candidate("airbench94_half", "muon", 1.0e-3, points((1.0, 65, 66, 67), (4.0, 83, 84, 85), (16.0, 88, 89, 90))),
        Candidate("airbench94_quarter", "paper", 4.0e-4,
                  points((2.0, 72, 73, 74), (8.0, 82, 83, 84), (30.0, 84, 85, 86))),
    ))


def probe_at(slower: float, frontier: Frontier = FRONTIER, timed: list | None = None,
             per_image: float | None = None):
    """A probe on a machine ``slower`` times the frontier's (or where every member's image costs ``per_image``)."""
    def probe(cfg: TrainConfig) -> Probe:
        c = frontier.candidate(cfg.model, cfg.recipe)
        cost = per_image if per_image is not None else (c.early_s_per_image or c.train_s_per_image) * slower
        if timed is not None:
            timed.append(cfg.model)
        evals = {lv: frontier.eval_s_per_image[cfg.model][lv] * (slower if per_image is None else 1) * 10_000
                 for lv in (0, 1, 2)}
        evals["selective"] = evals[0] + 0.25 * evals[2]
        return Probe(cost * cfg.batch_size, cfg.batch_size, evals)
    return probe


def test_the_frontier_interpolates_in_log_epochs_and_never_extrapolates_upwards() -> None:
    c = FRONTIER.candidates[0]
    # Below 0.5 epochs: the slope from 0.5 to 2 (20 points per factor 4) carried down, never below chance.
    assert c.accuracy(0, 0) == CHANCE and c.accuracy(0.25, 0) == pytest.approx(60 - 20 / 2)
    assert c.accuracy(0.001, 0) == CHANCE
    single = Candidate("airbench94", "paper", 1e-3, points((2.0, 50, 50, 50)))
    assert single.accuracy(1.0, 0) == pytest.approx(CHANCE + (50 - CHANCE) / 2)  # one length: from chance
    assert c.accuracy(2.0, 1) == 81 and c.accuracy(1.0, 0) == pytest.approx(70)  # halfway between 0.5 and 2 in log
    assert c.accuracy(4.0, 2) == pytest.approx(87) and c.accuracy(100.0, 0) == 90  # past 8 epochs: held at 90


def test_the_prediction_turns_seconds_into_epochs_at_the_probed_speed() -> None:
    wide = FRONTIER.candidates[0]
    probe = Probe(step_s=5.2, batch=1000, eval_s={0: 6.0, 1: 12.0, 2: 40.0, "selective": 16.0})  # 5.2 ms an image
    best = predict(wide, probe, 600, startup_s=5.0)
    # 600 s less start-up, half a step (the run's first builds its caches) and the chosen level's evaluation.
    expected = (600 - 5 - 2.6 - probe.eval_s[best.tta]) / (5.2e-3 * 50_000)
    assert best.epochs == pytest.approx(expected) and best.eval_s == probe.eval_s[best.tta]
    assert best.accuracy == pytest.approx(wide.accuracy(expected, best.tta)) and best.timed
    levels = [predict(wide, probe, 600, 5.0, max_tta=level) for level in (0, 1, 2)]
    assert best.accuracy == max(p.accuracy for p in levels) and levels[0].tta == 0 and levels[1].tta in (0, 1)


def test_the_early_epochs_cost_their_own_time() -> None:
    # The quarter width's first 3 epochs cost 5e-4 s an image there (its stem still trains), later ones 4e-4.
    early = dataclasses.replace(FRONTIER.candidates[2], early_epochs=3.0, early_s_per_image=5e-4)
    assert early.later_cost == pytest.approx(0.8) and early.phases == (3.0, pytest.approx(0.8))
    early_epoch_s = 1e-3 * 50_000  # here an image of the early epochs costs 1 ms: later ones 0.8 ms
    assert early.epochs_in(1.5 * early_epoch_s, 1e-3) == pytest.approx(1.5)
    assert early.epochs_in(3 * early_epoch_s + 2 * 0.8 * early_epoch_s, 1e-3) == pytest.approx(5.0)
    assert early.epochs_in(-1.0, 1e-3) == 0.0
    # Without early epochs (or their time), every epoch costs the same: the shipped format before them.
    assert FRONTIER.candidates[2].epochs_in(3 * early_epoch_s, 1e-3) == pytest.approx(3.0)
    assert FRONTIER.candidates[2].phases is None


@pytest.mark.parametrize("seconds, expected", [(150, "airbench94_quarter"), (600, "airbench94_half"),
                                               (20_000, "airbench94")])
def test_a_budget_chooses_by_what_each_candidate_reaches(seconds: float, expected: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(choice_mod.time, "monotonic", lambda: 100.0)
    timed: list[str] = []
    chosen = choose("airbench", seconds, clock=100.0, device=torch.device("cpu"), frontier=FRONTIER,
                    probe=probe_at(1.0, timed=timed))  # this machine is the frontier's
    assert timed[0] == "airbench94_quarter" and chosen.chosen.model == expected and chosen.chosen.timed
    every = [chosen.chosen, *chosen.others]
    assert chosen.chosen.accuracy == max(p.accuracy for p in every if p.timed) and len(every) == 3
    assert "predicted" in chosen.describe() and expected in chosen.describe()
    assert set(chosen.probes) == {f"{m} with {next(c.recipe for c in FRONTIER.candidates if c.model == m)}"
                                  for m in timed}


def test_a_member_that_cannot_win_is_never_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Timing the wide member's steps takes seconds on a CPU: at 150 s it cannot win even at 0.6x the cost the
    frontier's ratios give it, so it is not timed; its estimate is shown as one."""
    monkeypatch.setattr(choice_mod.time, "monotonic", lambda: 0.0)
    timed: list[str] = []
    short = choose("airbench", 150, 0.0, torch.device("cpu"), frontier=FRONTIER, probe=probe_at(1.0, timed=timed))
    assert "airbench94" not in timed and short.chosen.model == "airbench94_quarter"
    wide = next(p for p in short.others if p.model == "airbench94")
    assert not wide.timed and "at best: not timed" in short.describe()
    timed.clear()
    choose("airbench", 20_000, 0.0, torch.device("cpu"), frontier=FRONTIER, probe=probe_at(1.0, timed=timed))
    assert timed == ["airbench94_quarter", "airbench94_half", "airbench94"]


def test_a_machine_where_width_costs_nothing_chooses_the_widest(monkeypatch: pytest.MonkeyPatch) -> None:
    # A GPU: every member's step takes the same time, and the wide net's better epochs win at a budget
    # where a CPU takes the half.
    monkeypatch.setattr(choice_mod.time, "monotonic", lambda: 0.0)
    cpu = choose("airbench", 600, 0.0, torch.device("cpu"), frontier=FRONTIER, probe=probe_at(1.0))
    gpu = choose("airbench", 600, 0.0, torch.device("cpu"), frontier=FRONTIER, probe=probe_at(1.0, per_image=1e-4))
    assert cpu.chosen.model == "airbench94_half" and gpu.chosen.model == "airbench94"


def test_a_recipe_narrows_the_choice_and_an_unknown_one_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(choice_mod.time, "monotonic", lambda: 0.0)
    only = choose("airbench", 900, 0.0, torch.device("cpu"), frontier=FRONTIER, recipes=["paper"],
                  probe=probe_at(1.0))
    assert {p.recipe for p in [only.chosen, *only.others]} == {"paper"}
    with pytest.raises(UsageError, match="no airbench candidate with recipe sam"):
        choose("airbench", 900, 0.0, torch.device("cpu"), frontier=FRONTIER, recipes=["sam"], probe=probe_at(1.0))
    with pytest.raises(UsageError, match="leaves no time"):
        choose("airbench", 5, 0.0, torch.device("cpu"), frontier=FRONTIER, probe=probe_at(1.0))


def test_the_probe_takes_the_runs_own_steps() -> None:
    """Real steps of the recipe's run here: its batch, in its chunks, with its optimizer, on random images."""
    cfg = TrainConfig.for_model("airbench94_quarter", "muon", batch_size=16, micro_batch=8, eval_batch_size=20,
                                device="cpu", amp=False)
    probe = probe_candidate(cfg, torch.device("cpu"), test_images=100)
    assert probe.batch == 16 and probe.step_s > 0 and probe.s_per_image == probe.step_s / 16
    assert 0 < probe.eval_s[0] < probe.eval_s[2] and probe.seconds >= probe.step_s
    before = torch.get_rng_state()
    probe_candidate(cfg, torch.device("cpu"), test_images=100)
    assert torch.equal(torch.get_rng_state(), before)  # the run that follows draws what it would have drawn


def _plan_at(step_s: float, level_s: dict[int, float], budget_s: float):
    shape = RunShape(steps_per_epoch=49, test_batches=20, val_batches=None, evaluate=True, eval_every=0, tta=2)

    def plan_at(tta: int) -> BudgetPlan:
        plan = budget_mod.plan_steps(budget_s, 10.0, step_s, shape.steps_per_epoch,
                                     final_eval_s=level_s[tta] * shape.test_batches)
        plan.tta = tta
        return plan
    return plan_at


def test_the_tta_level_is_chosen_by_what_it_buys_against_the_steps_it_costs() -> None:
    level_s = {0: 1.0, 1: 2.0, 2: 6.0, "selective": 99.0}  # seconds per test batch: level 2 costs 120 s
    c = FRONTIER.candidates[0]
    short = choose_tta_by_frontier(_plan_at(2.0, level_s, 300), 2, c.accuracy)
    # 300 s less 10 spent, 7.5 kept back and the evaluation (20, 40 or 120 s), at 2 s a step of 49 an epoch:
    # TTA 0 131 steps (2.67 epochs, 82.1%), TTA 1 121 (2.47, 82.5%), TTA 2 81 (1.65, 79.2%): level 1 buys most
    # (and selective, made dear here, leaves no time).
    assert short.tta == 1 and short.steps == 121
    assert "uses TTA 1" in short.note and "82.5%" in short.note and "with TTA 2 (1.65 epochs)" in short.note
    long = choose_tta_by_frontier(_plan_at(2.0, level_s, 5000), 2, c.accuracy)
    assert long.tta == 2 and long.note == ""  # past the frontier's longest run the steps buy nothing more
    # Selective TTA at a cost of its own (2.5 s a batch, 50 s) buys more: 116 steps, 2.37 epochs, at level 2's
    # 83.2% less the 0.07 it gives up (SELECTIVE_LOSS).
    cheap = choose_tta_by_frontier(_plan_at(2.0, {**level_s, "selective": 2.5}, 300), 2, c.accuracy)
    assert cheap.tta == "selective" and cheap.steps == 116 and "83.1%" in cheap.note


def test_a_level_that_leaves_no_time_to_train_is_skipped() -> None:
    level_s = {0: 0.1, 1: 0.2, 2: 50.0, "selective": 12.6}  # level 2 alone would take 1000 s, selective 252
    plan = choose_tta_by_frontier(_plan_at(1.0, level_s, 300), 2, FRONTIER.candidates[0].accuracy)
    # TTA 0: 280 steps (5.71 epochs, 87.6%); TTA 1: 278 (5.67 epochs, 88.5%); TTA 2: none
    assert plan.tta == 1 and plan.steps == 278 and "(TTA 2 leaves no time to train)" in plan.note


def test_a_budgeted_run_of_a_member_plans_with_its_frontier(tmp_path: Path) -> None:
    """A member's budgeted run chooses its TTA by the frontier's prediction and plans its later, cheaper
    epochs at the frontier's ratio; a model outside a family has neither."""
    for model in MEMBERS:
        for recipe in ("paper", "muon"):
            known = frontier_candidate(model, recipe)
            assert known is not None and known.phases is not None and known.phases[0] > 0, (model, recipe)
    assert frontier_candidate("resnet18", "onecycle") is None and frontier_candidate("airbench94", "sam") is None
    assert is_family("airbench") and family_of("airbench94_half") == "airbench" and family_of("vgg16") is None
    data = tiny_dataset()
    common = dict(time_budget=60.0, device="cpu", amp=False, eval_batch_size=50, batch_size=50)
    member = Trainer(TrainConfig.for_model("airbench94_quarter", "muon", **common), data, tmp_path / "member")
    known = frontier_candidate("airbench94_quarter", "muon")
    assert member.budget.accuracy == known.accuracy and member.budget.phases == known.phases
    other = Trainer(TrainConfig.for_model("resnet18", **common), data, tmp_path / "other")
    assert other.budget.accuracy is None and other.budget.phases is None


def test_the_shipped_frontier_measures_every_candidate() -> None:
    shipped = shipped_frontier()
    record = {(m, "record") for m in ("airbench94_half", "airbench94_quarter")}  # the widths where it can win
    assert {(c.model, c.recipe) for c in shipped.candidates} == \
        {(m, r) for m in MEMBERS for r in ("paper", "muon")} | record
    for c in shipped.candidates:
        assert len(c.points) >= 2 and all(e0 < e1 for (e0, _), (e1, _) in zip(c.points, c.points[1:]))
        assert all(CHANCE < acc[level] < 100 for _, acc in c.points for level in (0, 1, 2))
        assert c.train_s_per_image > 0
        # airbench's stem trains its bias for 3 epochs (the record's for 0.19): timed apart where it costs more.
        assert c.early_epochs == (0.19 if c.recipe == "record" else 3) and c.early_s_per_image > 0
    for member in MEMBERS:
        assert set(shipped.eval_s_per_image[member]) == {0, 1, 2}


def test_the_shipped_frontier_sends_a_fast_machine_to_the_widest_member(monkeypatch: pytest.MonkeyPatch) -> None:
    # A GPU: every member's step takes the same short time, and 5 minutes hold more epochs of each than
    # any budgeted CPU run measured. Past its longest run a candidate is held at that run's accuracy, so
    # the frontier must reach airbench94's full-length accuracy, or the narrow members' longer CPU runs
    # would win a choice they lose on the GPU.
    monkeypatch.setattr(choice_mod.time, "monotonic", lambda: 0.0)
    shipped = shipped_frontier()
    fast = choose("airbench", 300, 0.0, torch.device("cpu"), frontier=shipped, probe=probe_at(1.0, shipped, None, 1e-6))
    assert fast.chosen.model == "airbench94" and fast.chosen.epochs > 20
    on_its_own_machine = choose("airbench", 300, 0.0, torch.device("cpu"), frontier=shipped, probe=probe_at(1.0, shipped))
    assert on_its_own_machine.chosen.model != "airbench94"  # where it was measured, a narrow member wins 5 minutes


@pytest.mark.parametrize("member, divisor", [("airbench94_half", 2), ("airbench94_quarter", 4)])
def test_the_family_members_are_airbench94_at_a_fraction_of_its_widths(member: str, divisor: int) -> None:
    wide, narrow = create_model("airbench94"), create_model(member)
    assert narrow.block1.conv1.out_channels == 64 // divisor and narrow.head.in_features == 256 // divisor
    assert type(narrow) is type(wide) and narrow.whiten.weight.shape == wide.whiten.weight.shape
    report, wide_report = (inspect_model(resolve_model(m)[1], [2, 3, 32, 32], name=m) for m in (member, "airbench94"))
    assert report.ok and report.output == [[2, 10]]
    assert wide_report.total_macs / report.total_macs > divisor ** 2 * 0.7  # compute falls with the width squared


def _head_step(member: str) -> float:
    """How far one step of the member's Muon recipe moves its logits, from the head alone, on rectified features."""
    cfg = TrainConfig.for_model(member, "muon")
    torch.manual_seed(0)
    model = create_model(member, **cfg.model_options)
    head_lr = {g["name"]: g["lr"] for g in build_optimizer(cfg, model).param_groups}["head"]
    features = torch.randn(cfg.batch_size, model.head.in_features).relu()  # like the pooled activations
    labels = torch.randint(0, 10, (cfg.batch_size,))

    def logits() -> torch.Tensor:
        return model.head(features) * model.logit_scale

    before = logits().detach()
    torch.nn.functional.cross_entropy(logits(), labels).backward()
    with torch.no_grad():
        model.head.weight -= head_lr * model.head.weight.grad
    return (logits() - before).abs().mean().item()


def test_the_narrow_members_muon_head_steps_as_far_as_the_records() -> None:
    """The quarter width's head once stepped 4x as far as airbench94's (41.65% against 81.44% in 2 minutes):
    its logit scale followed the width and its lr did not."""
    full = _head_step("airbench94")
    for member in ("airbench94_half", "airbench94_quarter"):
        assert _head_step(member) == pytest.approx(full, rel=0.15)


def test_airbench94_itself_is_unchanged() -> None:
    net = create_model("airbench94")
    assert sum(p.numel() for p in net.parameters()) == 1_972_792
    widths = [net.block1.conv1.out_channels, net.block2.conv1.out_channels, net.block3.conv1.out_channels]
    assert widths == [64, 256, 256]


def _fake_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(choice_mod, "shipped_frontier", lambda: FRONTIER)
    fast = probe_at(1 / 50)  # a machine 50x faster than the frontier's
    monkeypatch.setattr(choice_mod, "probe_candidate", lambda cfg, device, *_, **__: fast(cfg))


def test_a_chosen_run_is_recorded_and_a_resume_keeps_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_choice(monkeypatch)  # a machine 50x faster than the frontier's: 600 s is a long budget there
    request = request_run("airbench", settings={"time_budget": 600.0, "device": "cpu", "data": "fake", "amp": False,
                                                "eval_batch_size": 50})
    assert request.choice is not None and request.cfg.model == request.choice.chosen.model == "airbench94"
    cfg = request.cfg
    assert cfg.recipe == request.choice.chosen.recipe and cfg.choice["chosen"]["model"] == cfg.model
    assert cfg.batch_size == TrainConfig.for_model(cfg.model, cfg.recipe).batch_size  # the member's own recipe
    cfg.time_budget, cfg.max_steps, cfg.schedule_steps, cfg.batch_size = None, 2, 4, 50  # tiny, for the test
    cfg.epochs = 1
    train(cfg, tiny_dataset(), tmp_path / "run")
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["model"] == cfg.model and recorded["choice"]["family"] == "airbench"
    assert recorded["choice"]["chosen"] == request.choice.to_dict()["chosen"]
    again = request_run("airbench", settings={"max_steps": 4}, resume_dir=tmp_path / "run")
    assert again.choice is None and again.cfg.model == cfg.model and again.cfg.choice == recorded["choice"]
    result = resume(tmp_path / "run", tiny_dataset(), overrides={"max_steps": 4})
    assert result.global_step == 4
    assert json.loads((tmp_path / "run" / "config.json").read_text())["choice"] == recorded["choice"]


@pytest.mark.parametrize("settings, message", [
    ({}, "chooses a member for a time budget"),
    ({"time_budget": 60.0, "model_options": {"x": 1}}, "name a member"),
])
def test_a_family_without_what_it_needs_is_refused_in_one_line(settings: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        request_run("airbench", settings=settings)


def test_the_cli_says_what_it_chose_before_and_after(cached, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_choice(monkeypatch)
    fix_the_clock(monkeypatch)  # every step and evaluation "takes" 10 s
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "airbench", "--time-budget", "100s", "--offline", "--device", "cpu",
                                      "--recipe", "paper", "--batch-size", "50", "--out", str(out), "--no-amp"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    chosen = config["choice"]["chosen"]
    assert chosen["recipe"] == "paper" and config["model"] == chosen["model"]
    assert f"{chosen['model']} with paper, about" in result.output and "predicted" in result.output
    assert "time budget 1m40s:" in result.output and f"of {chosen['model']} with paper, TTA" in result.output
    refused = CliRunner().invoke(app, ["train", "airbench", "--epochs", "1", "--data", "fake"])
    assert refused.exit_code != 0 and "--time-budget" in refused.output and "Traceback" not in refused.output
