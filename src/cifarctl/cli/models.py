"""`cifarctl models [NAME]`: the models, one line per recipe with what it reaches here; NAME: its recipes in full."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from cifarctl.cli.options import Json
from cifarctl.cli.render import handle_errors, out_console, print_json, print_whole

if TYPE_CHECKING:
    from cifarctl.catalog import ModelSummary


@handle_errors
def models(
    name: Annotated[Optional[str], typer.Argument(help="A model (or FILE.py:Name): its recipes in full, with their sources.")] = None,
    json_output: Json = False,
) -> None:
    """List the models `train`, `evaluate` and `inspect` know: one line per model and recipe, with its size, what it
    reaches here (test accuracy, seeds, CPU, time) and the command that trains it; the first recipe is the default.

    Examples:

      cifarctl models

      cifarctl models airbench94_half      (its recipes in full, and where each number comes from)

      cifarctl models --json
    """
    from cifarctl.catalog import describe_models

    rows = describe_models(name)
    if json_output:
        print_json([r.to_dict() for r in rows] if name is None else rows[0].to_dict())
        return
    if name is not None:
        _show_one(rows[0])
        return
    table = Table(show_edge=False, header_style="bold")
    for column, justify in (("model", "left"), ("recipe", "left"), ("params", "right"), ("MACs", "right"),
                            ("reaches here (JPEG copy)", "left"), ("command", "left")):
        table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for r in rows:
        sized = (f"{r.params / 1e6:.2f} M", f"{r.macs / 1e6:,.1f} M") if r.params else ("yours", "yours")
        for i, recipe in enumerate(r.recipes):
            table.add_row(r.name if i == 0 else "", recipe["name"], *(sized if i == 0 else ("", "")),
                          recipe["here"] or "-", recipe["command"])
    print_whole(table)
    console = out_console()
    from cifarctl.models.registry import families

    for family, members in families().items():
        console.print(f"[bold]{family}[/]: {', '.join(members)}; `cifarctl train {family} --time-budget 5m` chooses "
                      "the member, recipe and TTA for the time (docs/training.md)")
    console.print("each recipe in full, with its sources: cifarctl models NAME")


def _show_one(row: ModelSummary) -> None:
    console = out_console()
    size = f"{row.params:,} parameters, {row.macs / 1e6:,.1f} M MACs per 3x32x32 image" if row.params else "your own"
    console.print(f"[bold]{row.name}[/]: {size}")
    for recipe in row.recipes:
        console.print(f"\n[bold]{recipe['name']}[/]{' (default)' if recipe['default'] else ''}: {recipe['summary']}")
        if recipe["settings"] != recipe["summary"]:
            console.print(f"  settings: {recipe['settings']}")
        console.print(f"  reaches here: {recipe['here'] or 'not measured here'}")
        console.print(f"  reference: {recipe['reference'] or 'none'}")
        console.print(f"  train it: {recipe['command']}")
