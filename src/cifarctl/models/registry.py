"""Model registry: a decorator registers a factory under its function name (timm's pattern).

Each model also carries its defaults next to its factory, as timm's ``default_cfg`` does: its
training recipes (``TrainConfig`` field values that ``train MODEL [--recipe NAME]`` starts from,
the first one the default), the input normalisation, and the accuracy each recipe is known to
reach, with its source. A model registered without recipes trains with the course's.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, overload

from torch import nn

from cifarctl.errors import UsageError

ModelFactory = Callable[..., nn.Module]

# The modern recipe for the standard CIFAR nets (resnet18, vgg16_bn): Nesterov SGD on a onecycle
# schedule (25% ramp from lr/25, cosine to lr/25e4, momentum cycling 0.9 -> 0.8), label smoothing and
# weight decay on conv/linear weights only. 40 epochs is a fifth of the 200 that the reference scripts
# spend. lr 0.2 is the reference's 0.1 per 128 images scaled to 512 by the square root of the batch
# ratio (Hoffer et al. 2017), not linearly: at the linear rule's 0.4 a 3-epoch vgg16_bn run, whose
# ramp reached 0.24 at step 50 and 0.30 at step 73, fell back to chance within its first epoch (test
# 15% after it), while a 2-epoch run through 0.2 at step 49 trained on (docs/accuracy.md).
# The classifier trains at head_lr, a twentieth of the convs' lr. The convs sit behind BatchNorm, so
# their step is relative to their scale; the linear head is not, and its input (pooled ReLU features,
# all positive) has a squared norm of several hundred, so at the convs' lr each step swings the logits
# by tens. On the real images the head at the common lr drove the training loss of both nets to 4-5
# within 12 steps at lr 0.02-0.05 (batch 256), while at a twentieth of it the loss fell from the
# first step even at a constant 0.1 (docs/accuracy.md has the curves).
# The ramp's steepness is part of the recipe, not its share of the run: no step climbs faster than
# the steepest step of a 50-step ramp from lr/25 to lr, so a one-epoch run (98 steps at batch 512)
# peaks at 0.098, 2 epochs at 0.196, and 3 or more reach the full 0.2.
SGD_ONECYCLE_RECIPE: dict = {
    "epochs": 40, "batch_size": 512, "optimizer": "sgd", "lr": 0.2, "momentum": 0.9, "nesterov": True,
    "weight_decay": 5e-4, "lr_schedule": "onecycle", "min_ramp_steps": 50, "label_smoothing": 0.1, "tta": 1,
    "head_lr": 0.01,
}


# The recipe a model named by a spec starts from (your own file, package.module:name, torchvision:NAME):
# the built-in CNNs' onecycle recipe, whose lessons hold for any classifier: a ramp no steeper than
# 50 steps' (so a short run peaks lower, never faster), and the classifier, the model's final linear
# layer, at a twentieth of the lr. A model without normalisation layers has no layer behind
# BatchNorm: every layer is like the classifier, so all of it trains at ``lr_without_norm``.
SPEC_RECIPE_VALUES: dict = {**SGD_ONECYCLE_RECIPE, "lr_without_norm": 0.02}


@dataclass(frozen=True)
class Measured:
    """What a recipe reached on this project's machines, on the JPEG copy of CIFAR-10: the test accuracy (%) of
    ``n`` seeds (their mean and sample standard deviation from 2), on which CPU, trained how long, and the
    command that trains it. Usage: ``Measured(84.61, 3, 0.17, "Zen 3, fp32", "7.59 epochs, 175 s")``"""

    accuracy: float
    n: int
    std: float | None
    cpu: str                 # the machine kind and precision: "Zen 4 bf16", "Zen 3 fp32", "Xeon bf16"
    length: str              # how long it trained: "7.59 epochs, 175 s", "5m budget, 3.0 epochs"
    args: str = ""           # the train command's flags besides the model and recipe: "--time-budget 5m --seeds 3"

    def line(self) -> str:
        """``84.61% ± 0.17 (n=3), Zen 3 fp32, 7.59 epochs, 175 s``"""
        spread = f" ± {self.std:.2f}" if self.std is not None and self.n > 1 else ""
        return f"{self.accuracy:.2f}%{spread} (n={self.n}), {self.cpu}, {self.length}"


@dataclass(frozen=True)
class Recipe:
    """A named way to train a model: ``TrainConfig`` values, and what they are known to reach."""

    name: str
    values: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides; {} = the course's recipe
    reference: str = ""                                   # "93.0% (source)": what the recipe is known to reach
    summary: str = ""                                     # one line on the recipe, for `cifarctl models`
    measured: Measured | None = None                      # its best-known result here, for `cifarctl models`


COURSE = Recipe("course", summary="the course's recipe")
SPEC_DEFAULT = Recipe("default", SPEC_RECIPE_VALUES,
                      reference="measured here: a LeNet-5 file (no BatchNorm) 48.35% (n=1) with --time-budget 2m on a "
                                "2-core CPU, JPEG copy (docs/accuracy.md)")


@dataclass(frozen=True)
class ModelCard:
    """A registered model: its factory and its recipes, the first of which is its default."""

    name: str
    factory: ModelFactory
    recipes: tuple[Recipe, ...] = (COURSE,)
    borrows: bool = False  # a spec's card: it may take a built-in model's recipe by name

    @property
    def default(self) -> Recipe:
        return self.recipes[0]

    @property
    def recipe(self) -> dict[str, Any]:
        """The default recipe's values."""
        return self.default.values

    @property
    def reference(self) -> str:
        return self.default.reference

    def get_recipe(self, name: str | None) -> Recipe:
        """The recipe called ``name`` (None: the default); an unknown name fails with the choices.

        A model named by a spec may also take a built-in model's recipe: ``onecycle``, or ``MODEL:RECIPE``.
        """
        if name is None:
            return self.default
        for recipe in self.recipes:
            if recipe.name == name:
                return recipe
        if self.borrows:
            borrowed = builtin_recipe(name)
            if borrowed is not None:
                return borrowed
        names = ", ".join(r.name for r in self.recipes)
        more = (", or a built-in model's: " + ", ".join(sorted({f"{c.name}:{r.name}" for c in _REGISTRY.values()
                                                                for r in c.recipes}))) if self.borrows else ""
        raise UsageError(f"{self.name} has no recipe {name!r}: choose one of {names}{more} (`cifarctl models` "
                         "lists them)")


_REGISTRY: dict[str, ModelCard] = {}


@overload
def register_model(factory: ModelFactory) -> ModelFactory: ...
@overload
def register_model(*, recipes: tuple[Recipe, ...] | list[Recipe] = ()) -> Callable[[ModelFactory], ModelFactory]: ...


def register_model(factory: ModelFactory | None = None, *, recipes: tuple[Recipe, ...] | list[Recipe] = ()) -> Any:
    """Register ``factory`` under its own name, so ``create_model("name")`` builds it.

    ``recipes`` are the ways ``train MODEL --recipe NAME`` knows to train it; the first is the
    default. Without them the model trains with the course's recipe.
    Usage: ``@register_model`` or ``@register_model(recipes=[Recipe("onecycle", {"optimizer": "sgd", ...})])``
    """

    def add(fn: ModelFactory) -> ModelFactory:
        name = fn.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        names = [r.name for r in recipes]
        if len(set(names)) != len(names):
            raise ValueError(f"model {name!r} has two recipes of one name: {names}")
        _REGISTRY[name] = ModelCard(name, fn, tuple(recipes) or (COURSE,))
        return fn

    return add(factory) if factory is not None else add


_FAMILIES: dict[str, tuple[str, ...]] = {}


def register_family(name: str, members: tuple[str, ...]) -> None:
    """Declare ``name`` a family of registered models (cheapest first): ``cifarctl train NAME --time-budget T``
    chooses the member and recipe predicted best for the time (``cifarctl.training.choice``)."""
    missing = [m for m in members if m not in _REGISTRY]
    if name in _FAMILIES or name in _REGISTRY or missing or not members:
        raise ValueError(f"family {name!r}: registered twice, named like a model, or with unknown members {missing}")
    _FAMILIES[name] = tuple(members)


def is_family(name: str) -> bool:
    return name in _FAMILIES


def families() -> dict[str, tuple[str, ...]]:
    """Every family and its members, cheapest first."""
    return dict(_FAMILIES)


def family_of(model: str) -> str | None:
    """The family ``model`` belongs to (``airbench`` for ``airbench94_half``), or None."""
    return next((family for family, members in _FAMILIES.items() if model in members), None)


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def is_model(name: str) -> bool:
    return name in _REGISTRY


def unknown_model_message(name: str) -> str:
    close = difflib.get_close_matches(name.lower(), list_models(), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"choose one of: {', '.join(list_models())}"
    return f"unknown model {name!r}: {hint}"


def model_card(name: str) -> ModelCard:
    """The registry entry of ``name``; an unknown name fails with close matches (``cifarctl.models.model_card``
    also gives a card for a spec of your own model)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(unknown_model_message(name) + " (or give path/to/file.py:ClassName, package.module:name "
                         "or torchvision:NAME)") from None


def builtin_recipe(name: str) -> Recipe | None:
    """A registered model's recipe by ``RECIPE`` (the first model that has one of that name) or ``MODEL:RECIPE``."""
    model, _, recipe = name.rpartition(":")
    for card in ([_REGISTRY[model]] if model in _REGISTRY else [] if model else list(_REGISTRY.values())):
        for candidate in card.recipes:
            if candidate.name == recipe:
                return candidate
    return None


def default_recipe(name: str, recipe: str | None = None) -> dict[str, Any]:
    """The ``TrainConfig`` values ``train MODEL [--recipe NAME]`` starts from (a copy)."""
    return dict(model_card(name).get_recipe(recipe).values)


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Build a registered model: ``create_model("resnet50", num_classes=10)``."""
    return model_card(name).factory(**kwargs)
