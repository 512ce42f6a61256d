"""A time budget that chooses the model too: ``cifarctl train airbench --time-budget 5m``.

A family (``airbench``: airbench94 at its own widths, at 1/2 and at 1/4) is a set of candidates, a
member and a recipe each. Which one a budget should train depends on the machine: on a GPU the
narrower members are no faster, on a CPU time is FLOPs and they see several times the epochs. So the
choice has two halves:

- **what each candidate reaches in a given number of epochs** (with its schedule fitted to that
  length, at each test-time augmentation level): the *frontier*, measured once on the JPEG copy and
  shipped with the package (``frontier.json``; docs/accuracy.md has the runs and how they were made);
- **how many epochs this machine gives each candidate** in the time left: a *probe* times one
  forward and backward pass of each member here (a few seconds in all), and its ratio to the same
  probe on the machine the frontier was measured on scales that machine's training and evaluation
  times to this one.

The candidate, and the final evaluation's TTA level, with the highest predicted accuracy wins; the
run that follows is an ordinary budgeted run of it, which measures its own steps and fits its
schedule to them (``cifarctl.training.budget``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Callable, Iterable

import torch

from cifarctl.allocator import keeps_memory, kept_memory
from cifarctl.device import autocast_dtype, default_channels_last, sync_device
from cifarctl.errors import UsageError
from cifarctl.models.airbench import FAMILY, FAMILY_WIDTHS
from cifarctl.models.registry import create_model

FAMILIES: dict[str, tuple[str, ...]] = {FAMILY: tuple(FAMILY_WIDTHS)}
CHANCE = 10.0          # accuracy (%) of an untrained 10-class net: where the frontier starts at 0 epochs
PROBE_BATCH = 128      # images per timed forward and backward pass of a member
PROBE_PASSES = 2       # timed passes, after one untimed pass that builds the kernels
RESERVE_FRACTION = 0.03  # of the budget, kept back for what the prediction leaves out (process exit, drift)


def is_family(name: str) -> bool:
    return name in FAMILIES


def family_of(model: str) -> str | None:
    """The family ``model`` belongs to (``airbench`` for ``airbench94_half``), or None."""
    return next((family for family, members in FAMILIES.items() if model in members), None)


@dataclass(frozen=True)
class Candidate:
    """One member trained with one recipe, and what it reached at each length measured."""

    model: str
    recipe: str
    train_s_per_image: float            # seconds per training image on the frontier's machine, whole steps
                                        # (after the early epochs below, where it has them)
    points: tuple[tuple[float, dict[int, float]], ...]  # (epochs, {TTA level: test accuracy %}), by epochs
    # The first ``early_epochs`` cost ``early_s_per_image`` there instead (None: the same): while airbench's
    # whitened stem trains its bias, the backward pass runs through the first conv at full resolution.
    early_epochs: float = 0.0
    early_s_per_image: float | None = None

    def epochs_in(self, seconds: float, slower: float, train_images: int = 50_000) -> float:
        """The epochs ``seconds`` of training hold on a machine ``slower`` times the frontier's."""
        epoch_s = self.train_s_per_image * slower * train_images
        early_s = (self.early_s_per_image or self.train_s_per_image) * slower * train_images
        if seconds <= self.early_epochs * early_s:
            return max(seconds, 0.0) / early_s
        return self.early_epochs + (seconds - self.early_epochs * early_s) / epoch_s

    def accuracy(self, epochs: float, tta: int) -> float:
        """Predicted test accuracy after ``epochs`` (the schedule fitted to that length) at TTA ``tta``.

        Linear in log(epochs) between measured lengths. Below the shortest, the first two lengths'
        slope carried down (never below chance; with one length, a straight line from chance at 0
        epochs). Past the longest it stays at that run's accuracy: the frontier never promises more
        than it has seen.
        """
        if epochs <= 0:
            return CHANCE
        lengths = [e for e, _ in self.points]
        values = [acc[tta] for _, acc in self.points]
        if epochs >= lengths[-1]:
            return values[-1]
        if epochs <= lengths[0]:
            if len(lengths) == 1:
                return CHANCE + (values[0] - CHANCE) * epochs / lengths[0]
            slope = (values[1] - values[0]) / math.log(lengths[1] / lengths[0])
            return max(CHANCE, values[0] - max(slope, 0.0) * math.log(lengths[0] / epochs))
        for (e0, a0), (e1, a1) in zip(zip(lengths, values), zip(lengths[1:], values[1:])):
            if e0 <= epochs <= e1:
                share = math.log(epochs / e0) / math.log(e1 / e0)
                return a0 + share * (a1 - a0)
        raise AssertionError("unreachable")


@dataclass(frozen=True)
class Frontier:
    """The shipped measurements: each candidate's accuracy by epochs, and the machine's times they pair with."""

    measured_on: str
    probe_s_per_image: dict[str, float]          # member -> the probe's seconds per image there
    eval_s_per_image: dict[str, dict[int, float]]  # member -> {TTA level: seconds per test image} there
    startup_s: float                             # a run's start-up after the choice there (data, model, kernels)
    candidates: tuple[Candidate, ...]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Frontier:
        candidates = tuple(
            Candidate(c["model"], c["recipe"], float(c["train_s_per_image"]),
                      tuple(sorted((float(p["epochs"]), {int(k): float(v) for k, v in p["accuracy"].items()})
                                   for p in c["points"])),
                      float(c.get("early_epochs", 0.0)), c.get("early_s_per_image"))
            for c in values["candidates"] if c["points"])
        evaluation = {m: {int(k): float(v) for k, v in levels.items()}
                      for m, levels in values["eval_s_per_image"].items()}
        return cls(values["measured_on"], {k: float(v) for k, v in values["probe_s_per_image"].items()},
                   evaluation, float(values["startup_s"]), candidates)

    def candidate(self, model: str, recipe: str | None) -> Candidate | None:
        return next((c for c in self.candidates if c.model == model and c.recipe == recipe), None)

    def members(self) -> list[str]:
        return sorted({c.model for c in self.candidates}, key=list(self.probe_s_per_image).index)


@lru_cache(maxsize=1)
def shipped_frontier() -> Frontier:
    """The frontier measured for this release (``cifarctl/training/frontier.json``)."""
    text = resources.files("cifarctl.training").joinpath("frontier.json").read_text(encoding="utf-8")
    return Frontier.from_dict(json.loads(text))


def frontier_accuracy(model: str, recipe: str | None) -> Callable[[float, int], float] | None:
    """The shipped frontier's prediction (epochs, TTA level) -> accuracy for ``model`` trained with ``recipe``,
    or None where none was measured: a budgeted run of it chooses its final TTA level with it."""
    found = shipped_frontier().candidate(model, recipe) if family_of(model) else None
    return found.accuracy if found is not None else None


@dataclass(frozen=True)
class Prediction:
    """What one candidate is predicted to reach in the time left, with its final evaluation at ``tta``."""

    model: str
    recipe: str
    tta: int
    epochs: float
    accuracy: float
    train_s_per_image: float  # on this machine
    eval_s: float             # the final evaluation, on this machine

    def label(self) -> str:
        return f"{self.model} with {self.recipe}"


def predict(frontier: Frontier, seconds_left: float, speed: dict[str, float], train_images: int = 50_000,
            test_images: int = 10_000, max_tta: int = 2, recipes: Iterable[str] | None = None) -> list[Prediction]:
    """Every candidate's best prediction (over TTA levels up to ``max_tta``) in ``seconds_left``, best first.

    ``speed``: member -> this machine's probe time over the frontier machine's (2.0: half as fast here).
    Usage: ``predict(shipped_frontier(), 280, {"airbench94": 3.1, ...})[0]``
    """
    allowed = set(recipes) if recipes is not None else None
    best: list[Prediction] = []
    for c in frontier.candidates:
        if c.model not in speed or (allowed is not None and c.recipe not in allowed):
            continue
        factor = speed[c.model]
        train_s = c.train_s_per_image * factor
        options = []
        for level in range(max_tta + 1):
            eval_s = frontier.eval_s_per_image[c.model][level] * factor * test_images
            training = seconds_left - frontier.startup_s * factor - eval_s
            epochs = c.epochs_in(training, factor, train_images)
            options.append(Prediction(c.model, c.recipe, level, epochs, c.accuracy(epochs, level), train_s, eval_s))
        best.append(max(options, key=lambda p: (p.accuracy, -p.tta)))
    return sorted(best, key=lambda p: -p.accuracy)


def probe_member(model: str, device: torch.device, amp: bool = True, batch: int = PROBE_BATCH,
                 keep_memory: bool | None = None) -> float:
    """Seconds per image of one forward and backward pass of ``model`` here, as training runs it
    (its precision, memory format and allocator setting), on random images: no data is needed yet."""
    net = create_model(model).to(device)
    cast = autocast_dtype(device, amp)
    if default_channels_last(device, cast):
        net = net.to(memory_format=torch.channels_last)
    images = torch.randn(batch, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=cast or torch.float32, enabled=cast is not None):
            loss = torch.nn.functional.cross_entropy(net(images), labels)
        loss.backward()

    with kept_memory(keeps_memory(device, cast, keep_memory)):
        step()
        sync_device(device)
        started = time.perf_counter()
        for _ in range(PROBE_PASSES):
            step()
        sync_device(device)
        return (time.perf_counter() - started) / (PROBE_PASSES * batch)


@dataclass
class Choice:
    """What a family's time budget chose, and why: kept in the run's config.json (``TrainConfig.choice``)."""

    family: str
    budget_s: float
    chosen: Prediction
    others: list[Prediction] = field(default_factory=list)
    probe_s_per_image: dict[str, float] = field(default_factory=dict)
    speed: dict[str, float] = field(default_factory=dict)
    seconds_spent: float = 0.0   # start-up and the probe, before the choice
    measured_on: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self, where: str = "here") -> str:
        """``5m here: airbench94_half with muon, about 4.1 epochs and TTA 0, predicted 86.0% (...)``"""
        from cifarctl.training.budget import format_duration

        c = self.chosen
        runners = "; ".join(f"{p.label()} {p.accuracy:.1f}% ({p.epochs:.1f} epochs, TTA {p.tta})"
                            for p in self.others[:3])
        return (f"{format_duration(self.budget_s)} {where}: {c.label()}, about {c.epochs:.1f} epochs and TTA {c.tta}, "
                f"predicted {c.accuracy:.1f}% from the frontier measured on {self.measured_on}"
                + (f"; next: {runners}" if runners else "")
                + f" (start-up and timing the members took {self.seconds_spent:.0f} s)")


def choose(family: str, budget_s: float, clock: float, device: torch.device, amp: bool = True, max_tta: int = 2,
           recipes: Iterable[str] | None = None, train_images: int = 50_000, frontier: Frontier | None = None,
           probe: Callable[[str], float] | None = None, keep_memory: bool | None = None) -> Choice:
    """Probe each member of ``family`` here, then choose the candidate predicted best in what is left of
    ``budget_s`` (counted from ``clock``, a ``time.monotonic()``).

    Usage: ``choose("airbench", 300, time.monotonic(), torch.device("cpu")).chosen.model``
    """
    frontier = frontier or shipped_frontier()
    allowed = list(recipes) if recipes is not None else None
    members = [m for m in frontier.members() if m in FAMILIES[family]
               and any(c.model == m and (allowed is None or c.recipe in allowed) for c in frontier.candidates)]
    if not members:
        raise UsageError(f"the frontier has no {family} candidate with recipe {', '.join(allowed or [])}: "
                         f"choose from {', '.join(sorted({c.recipe for c in frontier.candidates}))}")
    timer = probe or (lambda m: probe_member(m, device, amp, keep_memory=keep_memory))
    probed = {m: timer(m) for m in members}
    speed = {m: probed[m] / frontier.probe_s_per_image[m] for m in members}
    spent = time.monotonic() - clock
    left = budget_s - spent - RESERVE_FRACTION * budget_s
    ranked = predict(frontier, left, speed, train_images, max_tta=max_tta, recipes=allowed)
    if not ranked or ranked[0].epochs <= 0:
        from cifarctl.training.budget import format_duration

        raise UsageError(f"a time budget of {format_duration(budget_s)} leaves no time to train any {family} "
                         f"member here (choosing took {spent:.0f} s): give more, e.g. --time-budget 2m")
    return Choice(family, budget_s, ranked[0], ranked[1:], probed, speed, spent, frontier.measured_on)


def chosen_settings(choice: Choice, settings: dict[str, Any]) -> dict[str, Any]:
    """The settings the chosen run trains with: the user's, and the choice recorded (config.json keeps it).

    The final TTA level stays the recipe's (or the user's) upper bound: the run chooses it again from
    its own measured step and evaluation times (``TimeBudget``), with the same frontier.
    """
    return {**settings, "choice": choice.to_dict()}
