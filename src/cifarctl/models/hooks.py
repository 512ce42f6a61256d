"""The few fixed points at which training calls a model's own code (Lightning's hooks, without the framework).

A model that needs something special from training carries it itself, as methods with these names;
the trainer calls those a model has and names no model. Any ``nn.Module`` may define them, a user's
included, and one that defines none is trained exactly as it would be without them.

``settings`` is the run's resolved configuration (``TrainConfig`` values, read-only). What is the
model's own (how many epochs airbench94's stem bias trains) is a constructor argument, which its
recipes set through ``model_options``: training names no model.

- ``init_from_data(images, settings)``: once, before the first step of a run that starts from the
  model's own initialisation (not a resumed run, not one started from ``--ckpt`` weights), when the
  recipe asks for it (``init_from_data``). ``images`` is a seeded random sample of ``SAMPLE_IMAGES``
  training images, normalised as training sees them but not augmented, float NCHW on the device.
  airbench94 sets its whitening stem from their patch covariance here.
- ``on_epoch_start(epoch, settings)``: before the first step of every epoch (``epoch`` counts from
  0), a resumed run's first epoch included. airbench94 freezes its stem's bias after a few epochs.
  A model with this hook may switch parameters' ``requires_grad`` here; under DDP it is then
  wrapped to expect parameters without gradients.
- ``parameter_groups(settings)``: ``[ParameterGroup, ...]``, parameters an optimizer that splits
  them finely (Muon) should set apart from the ordinary split, each with the epochs it trains for,
  so that the schedule takes its learning rate to zero when it stops (the Muon record's stem bias).
- ``upgrade_state_dict(state_dict)``: a checkpoint's weights as the model reads them now, before they
  are checked against it (airbench94 fills in the logit scale that older checkpoints lack).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from torch import nn

HOOKS = ("init_from_data", "on_epoch_start", "parameter_groups", "upgrade_state_dict")
SAMPLE_IMAGES = 5000  # images handed to ``init_from_data`` (airbench's whitening uses 5000)


@dataclass(frozen=True)
class ParameterGroup:
    """Parameters a model sets apart for the optimizer; ``train_epochs``: None, or the epochs they train."""

    name: str
    params: tuple[nn.Parameter, ...]
    train_epochs: int | None = None


def has_hook(model: nn.Module, name: str) -> bool:
    """Whether ``model`` defines the hook ``name`` (one of ``HOOKS``)."""
    assert name in HOOKS, name
    return callable(getattr(model, name, None))


def call_hook(model: nn.Module, name: str, *args: Any) -> Any:
    """Call ``model``'s hook ``name`` with ``args`` if it has one; None if it has not."""
    return getattr(model, name)(*args) if has_hook(model, name) else None


def declared_groups(model: nn.Module, settings: Mapping[str, Any]) -> list[ParameterGroup]:
    """The parameter groups ``model`` declares (``[]`` when it declares none)."""
    return list(call_hook(model, "parameter_groups", read_only(settings)) or [])


def read_only(settings: Mapping[str, Any]) -> Mapping[str, Any]:
    return settings if isinstance(settings, MappingProxyType) else MappingProxyType(dict(settings))
