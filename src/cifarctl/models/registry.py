"""Model registry: a decorator registers a factory under its function name (timm's pattern).

Each model also carries its defaults next to its factory, as timm's ``default_cfg`` does: the
training recipe (``TrainConfig`` field values that ``train MODEL`` starts from), the input
normalisation, and a reference accuracy with its source. A model registered without them trains
with the course's recipe.
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
# weight decay on conv/linear weights only. lr 0.4 is the usual 0.1 per 128 images scaled to 512;
# 40 epochs is a fifth of the 200 that the reference scripts spend.
SGD_ONECYCLE_RECIPE: dict = {
    "epochs": 40, "batch_size": 512, "optimizer": "sgd", "lr": 0.4, "momentum": 0.9, "nesterov": True,
    "weight_decay": 5e-4, "lr_schedule": "onecycle", "label_smoothing": 0.1, "tta": 1,
}


@dataclass(frozen=True)
class ModelCard:
    """A registered model: its factory and its defaults."""

    name: str
    factory: ModelFactory
    recipe: dict[str, Any] = field(default_factory=dict)   # TrainConfig overrides; {} = the course's recipe
    reference: str = ""                                    # "93.0% (source)": what the recipe is known to reach
    summary: str = ""                                      # one line on the recipe, for `cifarctl models`


_REGISTRY: dict[str, ModelCard] = {}


@overload
def register_model(factory: ModelFactory) -> ModelFactory: ...
@overload
def register_model(*, recipe: dict[str, Any] | None = None, reference: str = "",
                   summary: str = "") -> Callable[[ModelFactory], ModelFactory]: ...


def register_model(factory: ModelFactory | None = None, *, recipe: dict[str, Any] | None = None,
                   reference: str = "", summary: str = "") -> Any:
    """Register ``factory`` under its own name, so ``create_model("name")`` builds it.

    Usage: ``@register_model`` or ``@register_model(recipe={"optimizer": "sgd", ...}, reference="93%")``
    """

    def add(fn: ModelFactory) -> ModelFactory:
        name = fn.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelCard(name, fn, dict(recipe or {}), reference, summary)
        return fn

    return add(factory) if factory is not None else add


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
    """The registry entry of ``name``; an unknown name fails with close matches."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(unknown_model_message(name)) from None


def default_recipe(name: str) -> dict[str, Any]:
    """The ``TrainConfig`` values ``train MODEL`` starts from (a copy)."""
    return dict(model_card(name).recipe)


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Build a registered model: ``create_model("resnet50", num_classes=10)``."""
    return model_card(name).factory(**kwargs)
