"""One model argument everywhere: a registered name, ``path/to/file.py:Name``, ``package.module:name`` or
``torchvision:NAME``, built with the keyword arguments given (``--model-kwargs``).

A checkpoint records where its model's code came from (``ModelSource``: the spec, the class's
qualified name, the file and its sha256) as data. cifarctl never imports code because a checkpoint
names it: ``evaluate``, ``predict`` and ``export`` build the model the command line names, and
compare the record with it only to say when the file changed since training.
"""

from __future__ import annotations

import ast
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from cifarctl.errors import UsageError
from cifarctl.models.registry import SPEC_DEFAULT, ModelCard, create_model, is_family, is_model, unknown_model_message
from cifarctl.models.registry import model_card as registered_card
from cifarctl.models.user import constructor_kwargs, file_sha256, resolve_callable, spec_kind

SPEC_KINDS = ("registered", "file", "module", "torchvision", "instance")  # instance: a module built in Python


@dataclass(frozen=True)
class ModelSource:
    """Where a model's code comes from, as a checkpoint and config.json record it (never imported from there)."""

    spec: str                 # canonical: a file spec carries its absolute path
    kind: str                 # one of SPEC_KINDS
    qualname: str = ""        # the class or function built ("ResNet18", "torchvision.models.resnet18")
    file: str | None = None   # the Python file of a file or module spec
    sha256: str | None = None  # that file's digest when the model was built

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> ModelSource | None:
        if not isinstance(values, dict) or "spec" not in values:
            return None
        known = {k: values.get(k) for k in ("spec", "kind", "qualname", "file", "sha256")}
        return cls(**known)  # type: ignore[arg-type]


def is_spec(model: str) -> bool:
    """Whether ``model`` names code rather than a registered model (it has a ``:``)."""
    return ":" in model and not is_model(model)


def check_spec(model: str) -> None:
    """Fail in one line, without importing anything, when ``model`` is neither registered (a model or a family)
    nor a spec."""
    if not is_model(model) and not is_family(model) and ":" not in model:
        raise UsageError(unknown_model_message(model) + " (or give path/to/file.py:ClassName, package.module:name "
                         "or torchvision:NAME)")


def canonical_spec(model: str) -> str:
    """``model`` as a run records it: a file spec with its absolute path, so a resume works from any folder."""
    if spec_kind(model) != "file":
        return model
    where, _, attr = model.rpartition(":")
    return f"{Path(where).expanduser().resolve()}:{attr}"


def display_name(model: str) -> str:
    """``model`` for messages: a file spec by its file's name (``lenet.py:LeNet``), anything else as it is."""
    if ":" not in model or spec_kind(model) != "file":
        return model
    where, _, attr = model.rpartition(":")
    return f"{Path(where).name}:{attr}"


def run_folder_name(model: str) -> str:
    """The folder of ``model``'s runs under the checkpoints root: ``resnet.ResNet18`` for ``models/resnet.py:ResNet18``."""
    kind = spec_kind(model)
    if kind == "registered":
        return model
    where, _, attr = model.rpartition(":")
    stem = Path(where).stem if kind == "file" else where
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{stem}.{attr}")


def parse_model_kwargs(items: list[str] | None) -> dict[str, Any]:
    """``["net_size=0.5", "vgg_name=VGG11"]`` -> ``{"net_size": 0.5, "vgg_name": "VGG11"}``: each value read as a
    Python literal where it parses (numbers, True, None, tuples, lists), else kept as a string."""
    kwargs: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UsageError(f"--model-kwargs takes KEY=VALUE pairs (net_size=0.5 depth=18); {item!r} is not one")
        try:
            kwargs[key] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            kwargs[key] = text.strip()
    return kwargs


def model_card(model: str) -> ModelCard:
    """The card of ``model``: a registered model's, or for a spec (``file.py:Name``, ``module:name``,
    ``torchvision:NAME``) one with the default recipe for a model of your own, which may also take a
    built-in model's recipe by name. An unknown name fails with close matches; nothing is imported."""
    if is_model(model) or ":" not in model:
        return registered_card(model)

    def build(**kwargs: Any) -> nn.Module:
        num_classes = kwargs.pop("num_classes", 10)
        return build_model(model, num_classes, kwargs)[0]

    return ModelCard(model, build, (SPEC_DEFAULT,), borrows=True)


def build_model(model: str, num_classes: int = 10, kwargs: dict[str, Any] | None = None,
                explicit_classes: bool = False) -> tuple[nn.Module, ModelSource]:
    """Build ``model`` (a registered name or a spec) with ``kwargs``, and say where its code came from.

    ``num_classes`` is passed to a registered model always, and to a spec's constructor when it takes
    that argument (``explicit_classes``: the user gave --num-classes, so one that takes none is refused).
    Usage: ``net, source = build_model("models/resnet.py:ResNet18")``
    """
    kwargs = dict(kwargs or {})
    if is_model(model):
        return create_model(model, num_classes=num_classes, **kwargs), ModelSource(model, "registered", model)
    check_spec(model)
    target = resolve_callable(model)
    net = target.build(constructor_kwargs(target.obj, kwargs, num_classes, explicit_classes, model))
    digest = file_sha256(target.file) if target.file else None
    return net, ModelSource(canonical_spec(model), spec_kind(model), target.qualname, target.file, digest)


def describe_source_change(recorded: ModelSource | None, current: ModelSource) -> str | None:
    """A phrase when ``current``'s file is not the one the checkpoint was trained with, else None."""
    if recorded is None or not recorded.sha256 or not current.sha256 or recorded.sha256 == current.sha256:
        return None
    return f"{current.file} changed since the checkpoint was trained (sha256 {recorded.sha256[:12]} then, " \
           f"{current.sha256[:12]} now)"


class ModelSourceChanged(UserWarning):
    """A model's source file is not the one its checkpoint was trained with, but the weights still fit."""
