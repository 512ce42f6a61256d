"""Options shared by several commands, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperCommand

Device = Annotated[str, typer.Option("--device", "-d", help="auto (CUDA, then an Apple GPU, then the CPU), cpu, cuda, cuda:N or mps.")]
Verify = Annotated[bool, typer.Option("--verify", help="Also check the train split's sha256 (the test split is always checked).")]
Offline = Annotated[bool, typer.Option("--offline", help="Never download; fail with a hint if the dataset is missing.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout (progress goes to stderr).")]
DataChoice = Annotated[str, typer.Option("--data", help="cifar10 (the cached dataset) or fake (random data, no download).")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", "-b", min=1, help="Images per batch.")]
OutDir = Annotated[Optional[Path], typer.Option("--out", help="Run folder (default: a new one under the checkpoints root).")]

# Sentinel for an option given without its value (``--ckpt`` alone means "the newest checkpoint").
NEWEST = "\0newest"

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

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        rewritten: list[str] = []
        for i, arg in enumerate(args):
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
