"""Config files: a run's settings in TOML, read by ``--config FILE`` and written beside every run's config.json.

TOML, not YAML: Python reads it without a dependency (``tomllib``, 3.11+), it is the format of pyproject.toml
that every Python user has edited, and its values are typed as written: ``lr = 1e-3`` is a number (YAML 1.1,
as PyYAML reads it, makes ``1e-3`` a string) and ``tta = "no"`` stays a string. It has no null: a setting
left out takes its recipe's value, and a setting that is None where the recipe has a value is written
``key = "none"`` (read back as ``cifarctl.run.config.NULL``: None on purpose), so that a file re-makes the
run it came from exactly. Values are checked against ``TrainConfig``'s types as they are read: ``amp =
"false"`` or ``epochs = "3"`` is one line naming the key and the type it takes.

The keys are ``TrainConfig``'s fields (``lr``, ``batch_size``, ``lr_schedule``, ... as config.json names
them; ``lr-schedule`` is read as ``lr_schedule``) plus ``model`` and ``recipe``. Values from the file are
the defaults of the command's options: every option given on the command line overrides its key
(``merge``). A run writes ``config.toml`` (``run_settings``) that ``--config`` reads back into the same
config.json; ``tune`` writes a recipe the same way (``best.toml``).
"""

from __future__ import annotations

import difflib
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable

from cifarctl.errors import UsageError

# What a run's length is made of: a length on the command line replaces the file's whole length, so
# `--config RUN/config.toml --time-budget 2m` fits the file's recipe to 2 minutes instead of its epochs.
LENGTH_KEYS = ("epochs", "max_steps", "time_budget", "schedule_steps")
# Settings a run fixes itself or that describe it rather than its recipe: not written to config.toml.
DERIVED_KEYS = ("schedule_steps", "choice")
# The keys of a recipe alone (best.toml): not those of one run (its seed, device, data, length, weights).
RUN_KEYS = ("model", "seed", "device", "data", "init_ckpt", "time_budget", "epochs", "max_steps", "schedule_steps",
            "val_split", "choice", "save_every", "log_every", "tensorboard", "eval", "compile", "sync_bn")
HEADER = "# cifarctl settings (TOML): `cifarctl train --config THIS_FILE` trains with them; options given\n" \
         "# on the command line override them. Keys are config.json's; see `cifarctl train --help`.\n"


def train_keys() -> list[str]:
    """Every key a config file may hold for ``train``: the fields of ``TrainConfig`` and ``recipe``."""
    from cifarctl.run.config import TrainConfig

    return [f.name for f in fields(TrainConfig)]


def read_config(path: Path | str, keys: Iterable[str], what: str = "cifarctl") -> dict[str, Any]:
    """The settings in the TOML file ``path``, with keys as ``keys`` spell them (``-`` read as ``_``).

    A file that is missing or not TOML, or a key that is not in ``keys``, fails in one line naming the
    file, the key and the closest one (``--lr-schedule``). Usage: ``read_config("best.toml", train_keys())``
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--config {path}: cannot read it ({exc})") from None
    try:
        values = _toml().loads(text)
    except Exception as exc:  # tomllib.TOMLDecodeError, whose message names the line
        raise UsageError(f"--config {path} is not TOML: {exc}") from None
    known = list(keys)
    settings: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
            hint = f": did you mean {close[0]} (--{close[0].replace('_', '-')})?" if close else \
                f"; {what} takes the keys of config.json (`cifarctl train --help` lists them as options)"
            raise UsageError(f"{path}: unknown key {key!r}{hint}")
        settings[name] = typed(path, name, value)
    return settings


NONE_TEXT = "none"  # a config file's None (TOML has no null)
TEXT_TOO = {"time_budget": "a duration such as \"2m\""}  # keys read from text by the command line's parsers


def typed(path: Path, key: str, value: Any) -> Any:
    """``value`` of ``key`` as ``TrainConfig`` types it (``"none"`` for a setting that may be None: ``NULL``);
    a value of another type is one line. Keys that are not ``TrainConfig``'s pass as they are."""
    from cifarctl.run.config import NULL

    hint = _hints().get(key)
    if hint is None or (key in TEXT_TOO and isinstance(value, str)):
        return value
    if value == NONE_TEXT and _optional(hint):
        return NULL
    if _fits(value, hint):
        return value
    wanted = TEXT_TOO.get(key, _describe(hint))
    raise UsageError(f"{path}: {key} = {_toml_text(value)} is not {wanted}; write it as {key} = "
                     f"{_example(hint)}" + (f' (or "{NONE_TEXT}")' if _optional(hint) else ""))


def _hints() -> dict[str, Any]:
    import typing

    from cifarctl.run.config import TrainConfig

    return typing.get_type_hints(TrainConfig)


def _alternatives(hint: Any) -> tuple[Any, ...]:
    import types
    import typing

    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def _optional(hint: Any) -> bool:
    return type(None) in _alternatives(hint)


def _fits(value: Any, hint: Any) -> bool:
    import typing

    for kind in _alternatives(hint):
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        if kind is Any or (kind is bool and isinstance(value, bool)) or (kind is str and isinstance(value, str)):
            return True
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if (origin or kind) is dict and isinstance(value, dict):
            return True
        if origin is tuple and isinstance(value, (list, tuple)) and len(value) == len(args) and \
                all(_fits(v, a) for v, a in zip(value, args)):
            return True
    return False


def _describe(hint: Any) -> str:
    import typing

    names = {bool: "true or false", int: "a whole number", float: "a number", str: "text in quotes",
             dict: "a table"}
    parts = []
    for kind in _alternatives(hint):
        if kind is type(None):
            continue
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        parts.append(f"a list of {len(args)} numbers" if origin is tuple else names.get(origin or kind, str(kind)))
    return " or ".join(parts)


def _example(hint: Any) -> str:
    import typing

    kind = next(k for k in _alternatives(hint) if k is not type(None))
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    examples = {bool: "true", int: "3", float: "0.1", str: '"text"', dict: "{ ... }"}
    return "[" + ", ".join("1" for _ in args) + "]" if origin is tuple else examples.get(origin or kind, "...")


def _toml_text(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def merge(from_file: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The file's settings under the command line's (``given``; None: not given). A length given on the
    command line (--epochs, --max-steps, --time-budget) replaces the file's whole length."""
    given = {k: v for k, v in given.items() if v is not None}
    base = dict(from_file)
    if any(key in given for key in LENGTH_KEYS):
        base = {k: v for k, v in base.items() if k not in LENGTH_KEYS}
    if "model_options" in given and "model_options" in base:  # constructor arguments change one at a time
        given["model_options"] = {**base["model_options"], **given["model_options"]}
    return {**base, **given}


def run_settings(config: dict[str, Any]) -> dict[str, Any]:
    """What config.toml holds of a run's config (config.json's dict): every setting but those the run fixed
    itself; a time-budgeted run keeps its budget, not the length the budget chose on this machine."""
    from cifarctl.run.config import TrainConfig

    known = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in config.items() if k in known and k not in DERIVED_KEYS
              and (v is not None or k not in RUN_KEYS)}  # a recipe's None is kept (written "none")
    if values.get("time_budget") is not None:
        values = {k: v for k, v in values.items() if k not in ("epochs", "max_steps")}
    return values


def recipe_settings(config: dict[str, Any]) -> dict[str, Any]:
    """A recipe alone (``best.toml``): ``run_settings`` without what belongs to one run (seed, device, length)."""
    return {k: v for k, v in run_settings(config).items() if k not in RUN_KEYS}


def to_toml(values: dict[str, Any], comment: str = "") -> str:
    """``values`` as a TOML document (tuples as arrays; tables last; None as ``"none"``), after ``comment``'s
    lines."""
    import tomli_w

    plain = {k: NONE_TEXT if v is None else _plain(v) for k, v in values.items()}
    tables = {k: v for k, v in plain.items() if isinstance(v, dict) and v}  # an empty table says nothing
    scalars = {k: v for k, v in plain.items() if not isinstance(v, dict)}
    lead = "".join(f"# {line}\n" if line else "#\n" for line in comment.splitlines())
    return lead + HEADER + "\n" + tomli_w.dumps({**scalars, **tables})


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    return value


def _toml() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    import tomli

    return tomli
