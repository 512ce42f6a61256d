"""The command-line interface: thin Typer commands over the library."""

from __future__ import annotations

import os
import sys

import typer

from cifarctl import __version__
from cifarctl.cli.download import download
from cifarctl.cli.evaluate import evaluate
from cifarctl.cli.export import export
from cifarctl.cli.inspect import inspect
from cifarctl.cli.models import models
from cifarctl.cli import process
from cifarctl.cli.options import ImagesAfterCkptCommand, OptionalValueCommand
from cifarctl.cli.predict import predict
from cifarctl.cli.runs import runs
from cifarctl.cli.train import train
from cifarctl.cli.tune import tune

app = typer.Typer(
    name="cifarctl",
    help="Train, evaluate and debug CNNs on CIFAR-10.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cifarctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Show the version and exit.")) -> None:
    """Train, evaluate and debug CNNs on CIFAR-10."""


app.command()(download)
app.command(cls=OptionalValueCommand)(inspect)
app.command(cls=OptionalValueCommand)(train)
app.command(cls=OptionalValueCommand)(evaluate)
app.command(cls=ImagesAfterCkptCommand)(predict)
app.command(cls=OptionalValueCommand)(export)
app.command()(tune)
app.command()(runs)
app.command()(models)


# Commands that leave nothing running or half-written when they return: once they are done, the
# process ends at once. Tearing down an interpreter that imported torch takes most of a second on a
# 2-core machine, time in which the user's prompt does not come back.
QUICK_EXIT = {"inspect", "predict", "export", "evaluate", "models", "runs"}


def main() -> None:
    """Console-script entry point."""
    process.mark_started()
    try:
        app()
    except SystemExit as done:
        command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None)
        code = done.code
        if command in QUICK_EXIT and "torch" in sys.modules and (code is None or isinstance(code, int)):
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except OSError:   # a closed pipe (`| head`): nothing more to say
                    pass
            os._exit(code or 0)
        raise
