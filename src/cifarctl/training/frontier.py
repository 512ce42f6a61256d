"""The measured frontier a family's time budget chooses from: what each candidate reaches in a number of epochs.

A family's candidate is a member trained with one recipe. What it reaches in a given number of epochs
(with its schedule fitted to that length, at each test-time augmentation level) was measured once on
the JPEG copy and ships with the package (``frontier.json``; docs/accuracy.md has the runs and how
they were made). Epochs and accuracy pair the same on any machine; the seconds it records are the
frontier machine's, kept for their ratios (a candidate's later epochs against its first ones, one
member's cost against another's).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from cifarctl.models.registry import family_of

CHANCE = 10.0          # accuracy (%) of an untrained 10-class net: where the frontier starts at 0 epochs
# What selective TTA (level 2 for the least confident quarter) gives up against level 2 where a point did not
# measure it: 0.07 points, the mean over 24 airbench checkpoints of CPU B (8 groups of 3, from 59% to 86%;
# 0.00 for airbench94 after 5 minutes, 0.07 for the quarter width's record recipe: docs/accuracy.md).
SELECTIVE_LOSS = 0.07


@dataclass(frozen=True)
class Candidate:
    """One member trained with one recipe, and what it reached at each length measured."""

    model: str
    recipe: str
    train_s_per_image: float            # seconds per training image on the frontier's machine, whole steps
                                        # (after the early epochs below, where it has them)
    points: tuple[tuple[float, dict[int | str, float]], ...]  # (epochs, {TTA level: test accuracy %}), by epochs
    # The first ``early_epochs`` cost ``early_s_per_image`` there instead (None: the same): while a model's
    # declared parameters train (its stem's bias), the backward pass runs further back.
    early_epochs: float = 0.0
    early_s_per_image: float | None = None

    @property
    def later_cost(self) -> float:
        """What an image costs after the early epochs, as a share of what it costs in them."""
        return self.train_s_per_image / (self.early_s_per_image or self.train_s_per_image)

    @property
    def phases(self) -> tuple[float, float] | None:
        """``(early epochs, later_cost)`` for a time budget's plan, or None where every epoch costs the same."""
        return (self.early_epochs, self.later_cost) if self.early_epochs and self.early_s_per_image else None

    def epochs_in(self, seconds: float, s_per_image: float, images_per_epoch: int = 50_000,
                  later_cost: float | None = None) -> float:
        """The epochs ``seconds`` of training hold where an image of the early epochs costs ``s_per_image``
        (and one of the later epochs ``later_cost`` times that: measured here, else the frontier's), an epoch
        being the ``images_per_epoch`` its recipe trains (``data.loader.epoch_images``)."""
        early_s = s_per_image * images_per_epoch
        epoch_s = early_s * (later_cost if later_cost is not None and self.phases else self.later_cost)
        if seconds <= self.early_epochs * early_s:
            return max(seconds, 0.0) / early_s
        return self.early_epochs + (seconds - self.early_epochs * early_s) / epoch_s

    def accuracy(self, epochs: float, tta: int | str) -> float:
        """Predicted test accuracy after ``epochs`` (the schedule fitted to that length) at TTA ``tta`` (selective:
        level 2's, less ``SELECTIVE_LOSS``, where a point has no measurement of its own).

        Linear in log(epochs) between measured lengths. Below the shortest, the first two lengths'
        slope carried down (never below chance; with one length, a straight line from chance at 0
        epochs). Past the longest it stays at that run's accuracy: the frontier never promises more
        than it has seen.
        """
        if epochs <= 0:
            return CHANCE
        lengths = [e for e, _ in self.points]
        values = [acc[tta] if tta in acc else acc[2] - SELECTIVE_LOSS for _, acc in self.points]
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
    eval_s_per_image: dict[str, dict[int, float]]  # member -> {TTA level: seconds per test image} there
    startup_s: float                             # a run's start-up after the choice there (data, model, kernels)
    candidates: tuple[Candidate, ...]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Frontier:
        candidates = tuple(
            Candidate(c["model"], c["recipe"], float(c["train_s_per_image"]),
                      tuple(sorted((float(p["epochs"]), {_level(k): float(v) for k, v in p["accuracy"].items()})
                                   for p in c["points"])),
                      float(c.get("early_epochs", 0.0)), c.get("early_s_per_image"))
            for c in values["candidates"] if c["points"])
        evaluation = {m: {_level(k): float(v) for k, v in levels.items()}
                      for m, levels in values["eval_s_per_image"].items()}
        return cls(values["measured_on"], evaluation, float(values["startup_s"]), candidates)

    def candidate(self, model: str, recipe: str | None) -> Candidate | None:
        return next((c for c in self.candidates if c.model == model and c.recipe == recipe), None)


@lru_cache(maxsize=1)
def shipped_frontier() -> Frontier:
    """The frontier measured for this release (``cifarctl/training/frontier.json``)."""
    text = resources.files("cifarctl.training").joinpath("frontier.json").read_text(encoding="utf-8")
    return Frontier.from_dict(json.loads(text))


def run_phases(model: str, recipe: str | None, choice: dict[str, Any] | None) -> tuple[float, float] | None:
    """The phases a budgeted run of ``model`` with ``recipe`` plans with: its candidate's early epochs, at the
    ratio of a later step to an early one that a family's choice timed here (``choice``, config.json's), else
    at the frontier machine's."""
    known = frontier_candidate(model, recipe)
    if known is None or known.phases is None:
        return None
    timed = ((choice or {}).get("probes") or {}).get(f"{model} with {recipe}") or {}
    return known.early_epochs, float(timed.get("later_cost") or known.later_cost)


def frontier_candidate(model: str, recipe: str | None) -> Candidate | None:
    """The shipped frontier's ``model`` trained with ``recipe``, or None where none was measured: a budgeted
    run of it chooses its final TTA level by the frontier's prediction and plans its phases with it."""
    return shipped_frontier().candidate(model, recipe) if family_of(model) else None


def _level(key: str) -> int | str:
    """A TTA level as frontier.json keys it: "0", "1", "2" or "selective"."""
    return int(key) if key.isdigit() else key
