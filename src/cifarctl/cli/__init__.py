"""The command-line interface: thin Typer commands over the library."""

from __future__ import annotations

import typer

from cifarctl import __version__
from cifarctl.cli.download import download
from cifarctl.cli.evaluate import evaluate
from cifarctl.cli.inspect import inspect
from cifarctl.cli.models import models
from cifarctl.cli.options import OptionalValueCommand
from cifarctl.cli.runs import runs
from cifarctl.cli.train import train

app = typer.Typer(
    name="cifarctl",
    help="Train, evaluate and debug CNNs on CIFAR-10.",
    no_args_is_help=True,
    add_completion=False,
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
app.command()(inspect)
app.command(cls=OptionalValueCommand)(train)
app.command(cls=OptionalValueCommand)(evaluate)
app.command()(runs)
app.command()(models)


def main() -> None:
    """Console-script entry point."""
    app()
