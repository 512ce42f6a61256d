"""Models from the user's own code: ``path/to/model.py:ClassName`` or ``package.module:name``."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Callable

from torch import nn

from cifarctl.errors import UsageError, first_line
from cifarctl.models.registry import create_model, is_model, unknown_model_message


def _load_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise UsageError(f"model file {path} does not exist")
    module_name = f"cifarctl_user_{path.stem}_{abs(hash(path.resolve()))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"{path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    # Let the file import its neighbours, as it would when run from its own folder.
    sys.path.insert(0, str(path.resolve().parent))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001  (any error in the user's file is reported, not raised)
        raise UsageError(f"importing {path} failed at {_where(exc, path)}: {_what(exc)}") from None
    finally:
        sys.path.remove(str(path.resolve().parent))
    return module


def _what(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(exc)}" if str(exc).strip() else type(exc).__name__


def _where(exc: BaseException, path: Path | None) -> str:
    """``file:line (the line)`` of the user's code that raised: the deepest frame in ``path``, else outside torch."""
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        return f"{exc.filename}:{exc.lineno}"
    frames = traceback.extract_tb(exc.__traceback__)
    target = str(path.resolve()) if path is not None else None
    mine = [f for f in frames if target is not None and str(Path(f.filename).resolve()) == target]
    library = (f"{os.sep}torch{os.sep}", f"{os.sep}cifarctl{os.sep}")
    outside = [f for f in frames if not any(part in f.filename for part in library)]
    frame = (mine or outside or frames or [None])[-1]
    if frame is None:
        return "?"
    shown = path if mine and path is not None else Path(frame.filename)
    line = f" (`{frame.line.strip()}`)" if frame.line else ""
    return f"{shown}:{frame.lineno}{line}"


def _candidates(module: ModuleType) -> list[str]:
    return [name for name, obj in vars(module).items()
            if (inspect.isclass(obj) and issubclass(obj, nn.Module) and obj.__module__ == module.__name__)
            or (inspect.isfunction(obj) and obj.__module__ == module.__name__)]


def _torchvision(name: str, num_classes: int | None) -> Callable[[], nn.Module]:
    """A builder of ``torchvision.models`` (classification, detection, segmentation, video...), no weights."""
    import torchvision.models

    names = torchvision.models.list_models()
    if name not in names:
        close = difflib.get_close_matches(name.lower(), names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(f'torchvision:{c}' for c in close)}?" if close else \
            "`python -c \"import torchvision; print(torchvision.models.list_models())\"` lists them"
        raise UsageError(f"torchvision has no model {name!r}: {hint}")
    extra = {} if num_classes is None else {"num_classes": num_classes}

    def factory() -> nn.Module:
        try:
            return torchvision.models.get_model(name, weights=None, **extra)
        except TypeError as exc:
            if "num_classes" in str(exc):
                raise UsageError(f"torchvision:{name} takes no --num-classes") from None
            raise
    return factory


def _accepts_num_classes(obj: Callable[..., object]) -> bool:
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return False
    return "num_classes" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def resolve_model(spec: str, num_classes: int | None = None) -> tuple[str, Callable[[], nn.Module]]:
    """``(display name, factory)`` for a registered name, ``torchvision:NAME``, or a ``file.py:Name`` /
    ``module:Name`` spec.

    The factory builds the model with no arguments, or with ``num_classes`` where given (refused by
    a model that takes none). Usage: ``name, make = resolve_model("torchvision:resnet18", 10)``
    """
    extra = {} if num_classes is None else {"num_classes": num_classes}
    if is_model(spec):
        return spec, lambda: create_model(spec, **extra)
    if spec.startswith("torchvision:"):
        return spec, _torchvision(spec.partition(":")[2], num_classes)
    if ":" not in spec:
        raise UsageError(unknown_model_message(spec) + " (or give path/to/file.py:ClassName)")
    where, _, attr = spec.rpartition(":")
    path: Path | None = None
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where).expanduser()
        module = _load_file(path)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise UsageError(f"cannot import module {where!r} ({exc})") from None
    obj = getattr(module, attr, None)
    if obj is None:
        close = difflib.get_close_matches(attr, _candidates(module), n=3, cutoff=0.4)
        options = close or _candidates(module)
        hint = f"; did you mean {', '.join(options)}?" if options else ""
        raise UsageError(f"{where} has no {attr!r}{hint}")
    if not callable(obj):
        raise UsageError(f"{spec} is not an nn.Module class or a function returning one")

    if num_classes is not None and not _accepts_num_classes(obj):
        raise UsageError(f"{spec} takes no num_classes argument, so --num-classes cannot be passed")
    try:
        inspect.signature(obj).bind(**extra)
    except TypeError as exc:
        raise UsageError(f"{spec} cannot be built without arguments ({exc}); wrap it in a function "
                         "that returns the model") from None
    except ValueError:
        pass   # no signature to read (a builtin): calling it will tell

    def factory() -> nn.Module:
        try:
            model = obj(**extra)
        except UsageError:
            raise
        except Exception as exc:  # noqa: BLE001  (a bug in the user's constructor is reported, not raised)
            raise UsageError(f"building {spec} failed at {_where(exc, path)}: {_what(exc)}") from None
        if not isinstance(model, nn.Module):
            raise UsageError(f"{spec} returned {type(model).__name__}, not an nn.Module")
        return model

    return spec, factory
