"""The registered models at a glance: size, compute, recipes and what each is known to reach."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from cifarctl.models import list_models, model_card
from cifarctl.run.config import recipe_summary
from cifarctl.trace.api import inspect_model

YOUR_OWN = "FILE.py:Name"  # the row of a model of your own (file, package.module:name, torchvision:NAME)


@dataclass
class ModelSummary:
    """One row of ``cifarctl models``."""

    name: str
    params: int
    macs: int                 # multiply-accumulates of one 3x32x32 image
    recipe: str               # the default recipe in one line
    reference: str            # the default recipe's reference accuracy and where it comes from
    recipes: list[dict[str, str]] = field(default_factory=list)  # every recipe: name, summary, reference

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def describe_models() -> list[ModelSummary]:
    """Every registered model, traced on one 3x32x32 image (shapes only, on the meta device).

    Usage: ``for m in describe_models(): print(m.name, m.params)``
    """
    rows = []
    for name in list_models():
        card = model_card(name)
        traced = inspect_model(lambda card=card: card.factory(), [1, 3, 32, 32], name=name)
        recipes = [{"name": r.name, "summary": r.summary or recipe_summary(r.values), "reference": r.reference}
                   for r in card.recipes]
        rows.append(ModelSummary(name, traced.total_params, traced.total_macs, recipes[0]["summary"],
                                 card.reference, recipes))
    spec = model_card("FILE.py:Name")  # any model of your own: its default recipe
    recipe = spec.default
    summary = recipe_summary(recipe.values)
    rows.append(ModelSummary(YOUR_OWN, 0, 0, summary, recipe.reference,
                             [{"name": recipe.name, "summary": summary, "reference": recipe.reference}]))
    return rows
