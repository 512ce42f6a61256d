"""Model registry: a decorator registers a factory under its function name (timm's pattern)."""

from __future__ import annotations

import difflib
from typing import Callable

from torch import nn

from cifarctl.errors import UsageError

ModelFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}


def register_model(factory: ModelFactory) -> ModelFactory:
    """Register ``factory`` under its own name, so ``create_model("name")`` builds it."""
    name = factory.__name__
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    _REGISTRY[name] = factory
    return factory


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def is_model(name: str) -> bool:
    return name in _REGISTRY


def unknown_model_message(name: str) -> str:
    close = difflib.get_close_matches(name.lower(), list_models(), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"choose one of: {', '.join(list_models())}"
    return f"unknown model {name!r}: {hint}"


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Build a registered model: ``create_model("resnet50", num_classes=10)``."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise UsageError(unknown_model_message(name)) from None
    return factory(**kwargs)
