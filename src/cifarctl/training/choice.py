"""A time budget that chooses the model too: ``cifarctl train airbench --time-budget 5m``.

A family (``airbench``: airbench94 at its own widths, at 1/2 and at 1/4) is a set of candidates, a
member and a recipe each. Which one a budget should train depends on the machine: on a GPU the
narrower members are no faster, on a CPU time is FLOPs and they see several times the epochs. So the
choice has two halves:

- **what each candidate reaches in a given number of epochs**: the shipped *frontier*
  (``cifarctl.training.frontier``), the same on any machine;
- **how many epochs this machine gives each candidate** in the time left: a *probe* takes real
  training steps of the candidate here, as its run will take them (its recipe's batch and chunks,
  optimizer, augmentation, precision, memory format and memory setting, on random images), and times
  its evaluation at each test-time augmentation level. A run's step time is no fixed multiple of a
  smaller probe's across machines (a 128-image pass predicted half the epochs that the quarter width
  then trained in fp32 on a Zen 3), so the probe takes whole steps.

Whole steps of the wide member cost seconds on a CPU, so the probe goes from the cheapest member up,
and a member is timed only where, at ``OPTIMISM`` times the cost the frontier's ratios give it, it
could still beat the best candidate timed. The candidate, and the final evaluation's TTA level, with
the highest predicted accuracy wins; the run that follows is an ordinary budgeted run of it, which
measures its own steps and fits its schedule to them (``cifarctl.training.budget``).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import torch

from cifarctl.allocator import kept_memory
from cifarctl.device import sync_device
from cifarctl.data.loader import epoch_images
from cifarctl.errors import UsageError
from cifarctl.evaluation import levels_upto, selective_cost
from cifarctl.models.registry import families
from cifarctl.run.config import DEFAULT_TTA_FRACTION, SELECTIVE, TrainConfig
from cifarctl.training.plan import format_duration, reserve_for
from cifarctl.training.tta_choice import time_eval_levels, tta_preference
from cifarctl.training.frontier import Candidate, Frontier, shipped_frontier

# An untimed member is timed only if it could win at this share of the cost the frontier's ratios give
# it (members' relative costs moved 1.3x between a Zen 4 in bf16 and a Zen 3 in fp32).
OPTIMISM = 0.6
TEST_IMAGES = 10_000


@dataclass(frozen=True)
class Probe:
    """A candidate's real training step, timed here, and its evaluation at each TTA level."""

    step_s: float                    # one optimizer step, after one untimed step
    batch: int
    eval_s: dict[int | str, float]   # the whole test set's evaluation at each TTA level
    seconds: float = 0.0             # what probing it took
    later_cost: float | None = None  # a step after the early epochs over one in them, timed (None: not)

    @property
    def s_per_image(self) -> float:
        return self.step_s / self.batch


def probe_candidate(cfg: TrainConfig, device: torch.device, test_images: int = TEST_IMAGES,
                    later_epoch: int | None = None) -> Probe:
    """Time ``cfg``'s training step here as its run takes it, on random images, and its evaluation.

    The parts are the run's own (``build_run``), so batch, chunks, optimizer, lookahead, augmentation,
    precision, memory format and kept memory are the run's. With
    ``later_epoch``, a step of that epoch is timed too, after the model's ``on_epoch_start`` hook for it
    (what its early epochs train, it may stop: its later steps cost less, by a ratio that differs from
    one CPU to another: 0.72 on a Zen 4 in bf16, 0.83 on a Zen 3 in fp32, for airbench94's quarter).
    """
    from cifarctl.data.cifar10 import fake_cifar10
    from cifarctl.distributed import DistInfo
    from cifarctl.models.hooks import call_hook, read_only
    from cifarctl.training.build import build_run

    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        parts = build_run(cfg, fake_cifar10(train=cfg.batch_size, test=cfg.eval_batch_size, seed=0), device,
                          DistInfo(), fresh=False)
        total = cfg.schedule_steps or 1

        def timed_step(index: int) -> float:
            watch = time.perf_counter()
            x, y = next(iter(parts.loaders.train.epoch(index)))
            parts.step(x, y)
            if parts.lookahead is not None:
                parts.lookahead.step(parts.built.model, index + 1, total)
            sync_device(device)
            return time.perf_counter() - watch

        call_hook(parts.built.model, "on_epoch_start", 0, read_only(cfg.to_dict()))
        with kept_memory(parts.keep_memory):  # as the run will keep it (its recipe's, or the device's default)
            timed_step(0)  # builds kernels, and takes the memory the next steps reuse
            step_s, later_cost = timed_step(1), None
            if later_epoch is not None:
                call_hook(parts.built.model, "on_epoch_start", later_epoch, read_only(cfg.to_dict()))
                later_cost = timed_step(2) / step_s
            images = next(iter(parts.loaders.test.epoch(0)))[0]
            per_batch = time_eval_levels(parts.built.model, images, cfg.tta, cfg.eval_amp, cfg.tta_fraction)
    batches = -(-test_images // cfg.eval_batch_size)
    return Probe(step_s, cfg.batch_size, {level: s * batches for level, s in per_batch.items()},
                 time.perf_counter() - started, later_cost)


@dataclass(frozen=True)
class Prediction:
    """What one candidate is predicted to reach in the time left, with its final evaluation at ``tta``."""

    model: str
    recipe: str
    tta: int | str
    epochs: float
    accuracy: float
    train_s_per_image: float  # on this machine, in the early epochs
    eval_s: float             # the final evaluation, on this machine
    timed: bool = True        # False: from another member's probe, at OPTIMISM times the frontier's ratio

    def label(self) -> str:
        return f"{self.model} with {self.recipe}"


def predict(candidate: Candidate, probe: Probe, seconds_left: float, startup_s: float, images_per_epoch: int = 50_000,
            max_tta: int | str = 2, timed: bool = True, fraction: float = DEFAULT_TTA_FRACTION) -> Prediction:
    """``candidate``'s best prediction over the TTA levels up to ``max_tta`` (``levels_upto``) in ``seconds_left``,
    at ``probe``'s speed, an epoch being ``images_per_epoch``; ``fraction``: selective TTA's share of images looked
    at again, in the run's config.

    ``startup_s``: the run's start-up after the choice (data, model; its first step costs about half a
    step more than the others). Usage: ``predict(shipped_frontier().candidates[0], probe, 280, 7.0)``
    """
    options = []
    for level in levels_upto(max_tta):
        training = seconds_left - startup_s - 0.5 * probe.step_s - probe.eval_s[level]
        epochs = candidate.epochs_in(training, probe.s_per_image, images_per_epoch, probe.later_cost)
        options.append(Prediction(candidate.model, candidate.recipe, level, epochs,
                                  candidate.accuracy(epochs, level), probe.s_per_image, probe.eval_s[level], timed))
    return max(options, key=lambda p: tta_preference(p.accuracy, p.tta, fraction))


def estimate(frontier: Frontier, candidate: Candidate, reference: Candidate, probe: Probe,
             fraction: float = DEFAULT_TTA_FRACTION) -> Probe:
    """An optimistic probe of ``candidate`` from ``reference``'s: the frontier's cost ratio of the two, times
    ``OPTIMISM`` (no member has been cheaper than that share of its ratio); selective TTA's at ``fraction``."""
    ratio = OPTIMISM * (candidate.early_s_per_image or candidate.train_s_per_image) / \
        (reference.early_s_per_image or reference.train_s_per_image)
    evals = {m: {**levels, SELECTIVE: selective_cost(levels[0], levels[2], fraction)}
             for m, levels in frontier.eval_s_per_image.items()}
    return Probe(probe.step_s * ratio, probe.batch,
                 {level: s * OPTIMISM * evals[candidate.model][level] / evals[reference.model][level]
                  for level, s in probe.eval_s.items()})


@dataclass
class Choice:
    """What a family's time budget chose, and why: kept in the run's config.json (``TrainConfig.choice``)."""

    family: str
    budget_s: float
    chosen: Prediction
    others: list[Prediction] = field(default_factory=list)
    probes: dict[str, dict[str, Any]] = field(default_factory=dict)  # "member with recipe" -> its Probe, timed here
    seconds_spent: float = 0.0   # start-up and the probes, before the choice
    probe_s: float = 0.0         # the probes alone
    measured_on: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self, where: str = "here") -> str:
        """``5m here: airbench94_half with muon, about 4.1 epochs and TTA 0, predicted 86.0% (...)``"""
        c = self.chosen
        runners = "; ".join(f"{p.label()} {p.accuracy:.1f}% ({p.epochs:.1f} epochs, TTA {p.tta}"
                            f"{'' if p.timed else ', at best: not timed'})" for p in self.others[:3])
        return (f"{format_duration(self.budget_s)} {where}: {c.label()}, about {c.epochs:.1f} epochs and TTA {c.tta}, "
                f"predicted {c.accuracy:.1f}% from the frontier measured on {self.measured_on}"
                + (f"; next: {runners}" if runners else "")
                + f" (start-up {self.seconds_spent - self.probe_s:.0f} s, timing {len(self.probes)} candidates' "
                  f"training steps {self.probe_s:.0f} s)")


def choose(family: str, budget_s: float, clock: float, device: torch.device, settings: dict[str, Any] | None = None,
           recipes: Iterable[str] | None = None, train_images: int = 50_000, frontier: Frontier | None = None,
           probe: Callable[[TrainConfig], Probe] | None = None) -> Choice:
    """Probe ``family``'s candidates here, cheapest first, then choose the one predicted best in what is left
    of ``budget_s`` (counted from ``clock``, a ``time.monotonic()``). ``settings``: the user's, which the runs
    take (precision, memory, TTA bound ...).

    Usage: ``choose("airbench", 300, time.monotonic(), torch.device("cpu")).chosen.model``
    """
    frontier = frontier or shipped_frontier()
    # What the runs will take, but their length (the probe takes two steps) and held-out images (one batch).
    settings = {k: v for k, v in (settings or {}).items() if k not in ("time_budget", "choice", "val_split")}
    allowed = list(recipes) if recipes is not None else None
    members = families()[family]
    candidates = [c for m in members for c in frontier.candidates
                  if c.model == m and (allowed is None or c.recipe in allowed)]
    if not candidates:
        raise UsageError(f"the frontier has no {family} candidate with recipe {', '.join(allowed or [])}: "
                         f"choose from {', '.join(sorted({c.recipe for c in frontier.candidates}))}")
    timer = probe or (lambda cfg: probe_candidate(cfg, device, later_epoch=_later_epoch(frontier, cfg)))
    configs = {(c.model, c.recipe): TrainConfig.for_model(c.model, c.recipe, **settings) for c in candidates}
    probes: list[tuple[Candidate, Probe]] = []  # timed, cheapest member first
    best: Prediction | None = None
    for c in candidates:
        left = budget_s - (time.monotonic() - clock) - reserve_for(budget_s)
        cfg = configs[c.model, c.recipe]  # its tta: the recipe's level, or the user's, the final evaluation's bound
        if best is not None:  # could it win at its most optimistic speed here?
            hope = predict(c, estimate(frontier, c, *probes[-1], cfg.tta_fraction), left, frontier.startup_s,
                           _epoch(cfg, train_images), cfg.tta, fraction=cfg.tta_fraction)
            if hope.accuracy <= best.accuracy:
                continue
        probes.append((c, timer(cfg)))
        now = predict(c, probes[-1][1], left, frontier.startup_s, _epoch(cfg, train_images), cfg.tta,
                      fraction=cfg.tta_fraction)
        best = now if best is None or now.accuracy > best.accuracy else best
    return _decide(family, budget_s, clock, frontier, candidates, probes, train_images, configs)


def _decide(family: str, budget_s: float, clock: float, frontier: Frontier, candidates: list[Candidate],
            probes: list[tuple[Candidate, Probe]], train_images: int,
            configs: dict[tuple[str, str], TrainConfig]) -> Choice:
    """Every candidate predicted in what is left now (untimed ones at their optimistic estimate), best first."""
    spent = time.monotonic() - clock
    left = budget_s - spent - reserve_for(budget_s)
    timed = {(c.model, c.recipe): probe for c, probe in probes}
    def predicted(c: Candidate) -> Prediction:
        cfg = configs[c.model, c.recipe]
        if (c.model, c.recipe) in timed:
            return predict(c, timed[c.model, c.recipe], left, frontier.startup_s, _epoch(cfg, train_images), cfg.tta,
                           fraction=cfg.tta_fraction)
        return predict(c, estimate(frontier, c, *probes[-1], cfg.tta_fraction), left, frontier.startup_s,
                       _epoch(cfg, train_images), cfg.tta, timed=False, fraction=cfg.tta_fraction)

    ranked = [predicted(c) for c in candidates]
    chosen = max((p for p in ranked if p.timed), key=lambda p: p.accuracy)
    if chosen.epochs <= 0:
        raise UsageError(f"a time budget of {format_duration(budget_s)} leaves no time to train any {family} "
                         f"member here (choosing took {spent:.0f} s): give more, e.g. --time-budget 2m")
    others = sorted((p for p in ranked if p is not chosen), key=lambda p: -p.accuracy)
    record = {f"{c.model} with {c.recipe}": {**asdict(p), "eval_s": {str(k): v for k, v in p.eval_s.items()},
                                             "s_per_image": p.s_per_image} for c, p in probes}  # JSON's keys
    return Choice(family, budget_s, chosen, others, record, spent, sum(p.seconds for _, p in probes),
                  frontier.measured_on)


def _epoch(cfg: TrainConfig, train_images: int) -> int:
    """The images an epoch of ``cfg``'s run trains (a recipe that drops its last batch trains fewer)."""
    return epoch_images(train_images, cfg.batch_size, cfg.drop_last)


def _later_epoch(frontier: Frontier, cfg: TrainConfig) -> int | None:
    """The first epoch after a candidate's early ones (None: its epochs all cost the same)."""
    known = frontier.candidate(cfg.model, cfg.recipe)
    return math.ceil(known.early_epochs) if known is not None and known.phases is not None else None


def chosen_settings(choice: Choice, settings: dict[str, Any]) -> dict[str, Any]:
    """The settings the chosen run trains with: the user's, and the choice recorded (config.json keeps it).

    The final TTA level stays the recipe's (or the user's) upper bound: the run chooses it again from
    its own measured step and evaluation times (``TimeBudget``), with the same frontier.
    """
    return {**settings, "choice": choice.to_dict()}
