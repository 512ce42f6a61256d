"""Models from the user's own code: ``path/to/model.py:ClassName`` or ``package.module:name``."""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from torch import nn

from cifarctl.errors import UsageError, first_line
from cifarctl.models.registry import create_model, is_model, unknown_model_message

_LOADED: dict[tuple[str, str], ModuleType] = {}  # (resolved path, sha256) -> module: a file runs once per process


def file_sha256(path: str | Path) -> str:
    """The sha256 of a model's source file, as a checkpoint records it and a file's import is keyed."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _load_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise UsageError(f"model file {path} does not exist")
    key = (str(path.resolve()), file_sha256(path))
    if key not in _LOADED:
        _LOADED[key] = _import_file(path)
    return _LOADED[key]


def _import_file(path: Path) -> ModuleType:
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


def accepts(obj: Callable[..., object], name: str) -> bool:
    """Whether calling ``obj`` may pass the keyword ``name`` (a parameter of that name, or ``**kwargs``)."""
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def spec_kind(spec: str) -> str:
    """What a model argument names: ``registered``, ``torchvision`` (torchvision:NAME), ``file`` (path/to/file.py:Name,
    or any location with a path separator) or ``module`` (package.module:name)."""
    if is_model(spec):
        return "registered"
    if spec.startswith("torchvision:"):
        return "torchvision"
    where = spec.rpartition(":")[0]
    return "file" if where.endswith(".py") or "/" in where or "\\" in where else "module"


def constructor_kwargs(obj: Callable[..., Any], kwargs: dict[str, Any] | None, num_classes: int | None,
                       explicit: bool, spec: str) -> dict[str, Any]:
    """The keyword arguments a spec's constructor is called with: ``kwargs``, and ``num_classes`` where the
    constructor takes it, or where the user gave it (``explicit``: --num-classes), which a constructor that
    takes none refuses in one line. Training, evaluation and ``inspect`` all build with these."""
    kwargs = dict(kwargs or {})
    if "num_classes" in kwargs or num_classes is None:
        return kwargs
    if accepts(obj, "num_classes"):
        kwargs["num_classes"] = num_classes
    elif explicit:
        raise UsageError(f"{spec} takes no num_classes argument, so --num-classes cannot be passed")
    return kwargs


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


@dataclass
class Target:
    """What a spec names, resolved: the class or function, and where it lives."""

    spec: str
    obj: Callable[..., Any]
    qualname: str
    path: Path | None = None     # the file of a file spec
    file: str | None = None      # the Python file the code lives in (file and module specs)

    def check(self, kwargs: dict[str, Any]) -> None:
        """Fail in one line, before building, when ``obj`` cannot be called with ``kwargs`` (a missing argument)."""
        try:
            inspect.signature(self.obj).bind(**kwargs)
        except TypeError as exc:
            given = f"with {_shown(kwargs)}" if kwargs else "without arguments"
            raise UsageError(f"{self.spec} cannot be built {given} ({exc}): give its arguments with "
                             "--model-kwargs KEY=VALUE, or wrap it in a function that returns the model") from None
        except ValueError:
            pass   # no signature to read (a builtin): calling it will tell

    def build(self, kwargs: dict[str, Any]) -> nn.Module:
        """``obj(**kwargs)``, checked: a missing argument, a bug in the constructor, a result that is no nn.Module
        are one line each, naming the file and line."""
        self.check(kwargs)
        try:
            model = self.obj(**kwargs)
        except UsageError:
            raise
        except Exception as exc:  # noqa: BLE001  (a bug in the user's constructor is reported, not raised)
            raise UsageError(f"building {self.spec} failed at {_where(exc, self.path)}: {_what(exc)}") from None
        if not isinstance(model, nn.Module):
            raise UsageError(f"{self.spec} returned {type(model).__name__}, not an nn.Module")
        return model


def _shown(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def resolve_callable(spec: str) -> Target:
    """The class or function a ``file.py:Name``, ``module:name`` or ``torchvision:NAME`` spec names (importing
    the file or module the user named; a file already imported in this process is not run again)."""
    if spec.startswith("torchvision:"):
        import torchvision.models

        name = spec.partition(":")[2]
        _torchvision(name, None)  # an unknown name fails here, with close matches
        builder = torchvision.models.get_model_builder(name)

        def build(**kwargs: Any) -> nn.Module:
            return torchvision.models.get_model(name, weights=None, **kwargs)

        build.__signature__ = inspect.signature(builder)  # type: ignore[attr-defined]
        return Target(spec, build, f"{builder.__module__}.{builder.__qualname__}")
    if ":" not in spec:
        raise UsageError(unknown_model_message(spec) + " (or give path/to/file.py:ClassName)")
    where, _, attr = spec.rpartition(":")
    path: Path | None = None
    if spec_kind(spec) == "file":
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
    file = str(path.resolve()) if path is not None else getattr(module, "__file__", None)
    return Target(spec, obj, getattr(obj, "__qualname__", attr), path, file)


def resolve_model(spec: str, num_classes: int | None = None,
                  kwargs: dict[str, Any] | None = None) -> tuple[str, Callable[[], nn.Module]]:
    """``(display name, factory)`` for a registered name, ``torchvision:NAME``, or a ``file.py:Name`` /
    ``module:Name`` spec.

    The factory builds the model with ``kwargs`` (``--model-kwargs``), and ``num_classes`` where given
    (refused by a model that takes none). Usage: ``name, make = resolve_model("torchvision:resnet18", 10)``
    """
    extra = {**(kwargs or {}), **({} if num_classes is None else {"num_classes": num_classes})}
    if is_model(spec):
        return spec, lambda: create_model(spec, **extra)
    if spec.startswith("torchvision:") and not kwargs:
        return spec, _torchvision(spec.partition(":")[2], num_classes)
    target = resolve_callable(spec)
    extra = constructor_kwargs(target.obj, kwargs, num_classes, explicit=num_classes is not None, spec=spec)
    target.check(extra)  # a missing argument fails here, before anything is traced
    return spec, lambda: target.build(extra)
