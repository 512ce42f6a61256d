"""Options shared by several commands, defined once."""

from __future__ import annotations

from pathlib import Path
import copy
from typing import Annotated, Any, Optional, get_args

import typer
from typer.core import TyperCommand

from cifarctl import paths

Device = Annotated[str, typer.Option("--device", "-d", help="auto (CUDA, then an Apple GPU, then the CPU), cpu, cuda, cuda:N or mps.")]
Verify = Annotated[bool, typer.Option("--verify", help="Also check the train split's sha256 (the test split is always checked).")]
Offline = Annotated[bool, typer.Option("--offline", help="Never download; fail with a hint if the dataset is missing.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout (progress goes to stderr).")]
TtaFraction = Annotated[Optional[float], typer.Option("--tta-fraction", min=0.0, max=1.0, help="With --tta selective: the share of the test images, the least confident, looked at again with level 2 (default: the run's, else the record's share).")]
DataChoice = Annotated[str, typer.Option("--data", help="cifar10 (the cached dataset) or fake (random data, no download).")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", "-b", min=1, help="Images per batch.")]
OutDir = Annotated[Optional[Path], typer.Option("--out", help="Run folder (default: a new one under the checkpoints root).")]

ModelArg = Annotated[str, typer.Argument(
    help="A registered model (`cifarctl models`), your own path/to/file.py:ClassName (or a function "
                          "returning the model), package.module:name, or torchvision:NAME.")]
ModelKwargs = Annotated[Optional[list[str]], typer.Option(
    "--model-kwargs", help="Constructor arguments of MODEL as KEY=VALUE (values read as Python literals where they "
                           "parse, else strings); repeat it, or give several after it. Default: those the run recorded.")]
# A model named on the command line or by a --config file's `model` key.
ModelOrConfig = Annotated[Optional[str], typer.Argument(
    help="A registered model (`cifarctl models`), your own path/to/file.py:ClassName (or a function "
         "returning the model), package.module:name, or torchvision:NAME; default: --config's model.",
    show_default=False)]
ConfigFile = Annotated[Optional[Path], typer.Option(
    "--config", help="Settings from a TOML file (a run's config.toml, tune's best.toml): keys as config.json's; "
                     "options given here override them.")]
NumClasses = Annotated[Optional[int], typer.Option(
    "--num-classes", min=1, help="Pass num_classes=N to MODEL's constructor (default: the data's, where it takes one).")]


# The panels of a long help (`train --help`), in the order they are shown; other panels come first, and the
# options without one ("--help") last.
PANELS = ("Model", "Schedule and optimizer", "Augmentation", "Evaluation", "Speed", "Seeds", "Run and output")


def in_panel(option: Any, panel: str) -> Any:
    """A shared ``Annotated`` option shown under ``panel`` in a command's help (``rich_help_panel``)."""
    base, info = get_args(option)[:2]
    placed = copy.copy(info)
    placed.rich_help_panel = panel
    return Annotated[base, placed]


def numbers(text: str | None, count: int, flag: str) -> tuple[float, ...] | None:
    """``"0.14,0.13"`` -> ``(0.14, 0.13)``: a flag's comma-separated numbers (None when not given)."""
    if text is None:
        return None
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        from cifarctl.errors import UsageError

        raise UsageError(f"{flag} takes {count} numbers separated by a comma, e.g. {','.join(['0.1'] * count)}; "
                         f"got {text!r}")
    return values


def model_kwargs(items: list[str] | None) -> dict[str, Any] | None:
    """``--model-kwargs`` as a dict; None when not given (then a checkpoint's recorded ones apply)."""
    if not items:
        return None
    from cifarctl.models.spec import parse_model_kwargs

    return parse_model_kwargs(items)


# An option given without its value (``--ckpt`` alone means "the newest checkpoint").
NEWEST = paths.NEWEST

Ckpt = Annotated[Optional[str], typer.Option("--ckpt", help="Checkpoint file (cifarctl's or a raw state_dict); bare "
                                              "or omitted: the newest checkpoint of MODEL.")]


def checkpoint_path(model: str, ckpt: str | None) -> Path:
    """The file a ``--ckpt`` names; bare or omitted: MODEL's newest checkpoint."""
    if ckpt in (None, NEWEST):
        from cifarctl.run.checkpoint import find_latest

        return find_latest(model)
    return Path(ckpt).expanduser()


class OptionalValueCommand(TyperCommand):
    """A command whose options in ``optional_value`` may be given bare: ``--ckpt`` means NEWEST.

    Click has no optional-value options; rewriting the arguments before parsing keeps the help and
    the typing of a plain ``--ckpt FILE`` option.
    """

    optional_value: tuple[str, ...] = ("--ckpt", "--resume")

    def takes_value(self, following: str) -> bool:
        """Whether the argument after a bare-able option is its value."""
        return not following.startswith("-")

    def format_options(self, ctx: Any, formatter: Any) -> None:
        """Options in the panels their ``rich_help_panel`` names (a plain-text help, as git groups its
        options); arguments first, then the options without a panel, then each panel in order of appearance."""
        arguments = []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx) if param.param_type_name == "argument" else None
            if record:  # as Typer shows them: MODEL, not model
                arguments.append((record[0].replace(param.name or "", (param.name or "").upper(), 1), record[1]))
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)
        panels: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record and param.param_type_name != "argument":
                panels.setdefault(getattr(param, "rich_help_panel", None) or "Options", []).append(record)
        order = [*PANELS, "Options"]
        for panel, records in sorted(panels.items(), key=lambda item: order.index(item[0]) if item[0] in order else 0):
            with formatter.section(panel):
                formatter.write_dl(records)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        rewritten: list[str] = []
        for i, arg in enumerate(args):
            # timm's `--model-kwargs a=1 b=2`: every KEY=VALUE after the flag's first value is one of its values.
            if "=" in arg and not arg.startswith("-") and rewritten[-2:-1] == ["--model-kwargs"]:
                rewritten += ["--model-kwargs", arg]
                continue
            rewritten.append(arg)
            if arg in self.optional_value and (i + 1 == len(args) or not self.takes_value(args[i + 1])):
                rewritten.append(NEWEST)
        return super().parse_args(ctx, rewritten)


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class ImagesAfterCkptCommand(OptionalValueCommand):
    """``predict MODEL --ckpt cat.jpg``: a bare ``--ckpt`` followed by images or folders, not a checkpoint."""

    def takes_value(self, following: str) -> bool:
        path = Path(following)
        return super().takes_value(following) and not path.is_dir() and path.suffix.lower() not in IMAGE_SUFFIXES


def config_values(path: Path, keys: list[str], command: str) -> dict[str, Any]:
    """A --config file's settings as the options take them: ``time_budget = "2m"`` in seconds, ``tta = "2"``
    a level (``cifarctl.run.config_file.read_config``)."""
    from cifarctl.run.config import parse_tta
    from cifarctl.run.config_file import read_config
    from cifarctl.training.plan import parse_duration

    values = read_config(path, keys, command)
    if isinstance(values.get("time_budget"), str):
        values["time_budget"] = parse_duration(values["time_budget"])
    if "tta" in values:
        values["tta"] = parse_tta(values["tta"])
    return values
