"""The registered models at a glance: size, compute, recipes and what each is known to reach."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cifarctl.models import list_models, model_card
from cifarctl.models.registry import Recipe
from cifarctl.run.config import recipe_summary
from cifarctl.trace.api import inspect_model

YOUR_OWN = "FILE.py:Name"  # the row of a model of your own (file, package.module:name, torchvision:NAME)


@dataclass
class ModelSummary:
    """One model of ``cifarctl models``: its size, and each recipe with what it reaches and how to train it."""

    name: str
    params: int
    macs: int                 # multiply-accumulates of one 3x32x32 image (0: a model of your own)
    recipe: str               # the default recipe in one line
    reference: str            # the default recipe's reference accuracy and where it comes from
    recipes: list[dict[str, Any]] = field(default_factory=list)  # name, summary, settings, reference, measured, command

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def recipe_entry(model: str, recipe: Recipe, default: bool) -> dict[str, Any]:
    """A recipe as ``cifarctl models`` shows it: its summary, its reference, what it reached here (one line, and
    the numbers), and the command that trains it."""
    measured = recipe.measured
    command = f"cifarctl train {model}" + ("" if default else f" --recipe {recipe.name}")
    if measured is not None and measured.args:
        command += f" {measured.args}"
    settings = recipe_summary(recipe.values)
    return {"name": recipe.name, "default": default, "summary": recipe.summary or settings, "settings": settings,
            "reference": recipe.reference, "here": measured.line() if measured else None,
            "measured": asdict(measured) if measured else None, "command": command}


def describe_models(name: str | None = None) -> list[ModelSummary]:
    """Every registered model (or the one ``name``d), traced on one 3x32x32 image (shapes only, on the meta device).

    Usage: ``for m in describe_models(): print(m.name, m.params)``
    """
    rows = []
    for model in [name] if name is not None and name != YOUR_OWN else [] if name == YOUR_OWN else list_models():
        card = model_card(model)  # an unknown name fails here, with close matches
        traced = inspect_model(lambda card=card: card.factory(), [1, 3, 32, 32], name=model)
        recipes = [recipe_entry(model, r, i == 0) for i, r in enumerate(card.recipes)]
        rows.append(ModelSummary(model, traced.total_params, traced.total_macs, recipes[0]["summary"],
                                 card.reference, recipes))
    if name is None or name == YOUR_OWN:
        recipe = model_card(YOUR_OWN).default  # any model of your own: its default recipe
        entry = recipe_entry(YOUR_OWN, recipe, True)
        rows.append(ModelSummary(YOUR_OWN, 0, 0, entry["summary"], recipe.reference, [entry]))
    return rows
