"""`cifarctl models`: the registered models, their size, compute and default recipe."""

from __future__ import annotations

from rich.table import Table

from cifarctl.cli.options import Json
from cifarctl.cli.render import handle_errors, out_console, print_json


@handle_errors
def models(json_output: Json = False) -> None:
    """List the models `train`, `evaluate` and `inspect` know, with their recipes (`train MODEL --recipe NAME`;
    the first is the default), and the default recipe of a model of your own (FILE.py:Name).

    Examples:

      cifarctl models

      cifarctl models --json
    """
    from cifarctl.catalog import describe_models

    rows = describe_models()
    if json_output:
        print_json([r.to_dict() for r in rows])
        return
    table = Table(show_edge=False, header_style="bold")
    for column, justify in (("model", "left"), ("params", "right"), ("MACs (3x32x32)", "right"),
                            ("recipe", "left"), ("reference accuracy", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        for i, recipe in enumerate(r.recipes):
            label = f"[bold]{recipe['name']}[/]{' (default)' if i == 0 and len(r.recipes) > 1 else ''}: {recipe['summary']}"
            sized = (f"{r.params:,}", f"{r.macs / 1e6:,.1f} M") if r.params else ("yours", "yours")
            first = (r.name, *sized) if i == 0 else ("", "", "")
            table.add_row(*first, label, recipe["reference"])
    out_console().print(table)
    from cifarctl.models.registry import families

    for family, members in families().items():
        out_console().print(f"[bold]{family}[/]: {', '.join(members)}; `cifarctl train {family} --time-budget 5m` "
                            "chooses the member, recipe and TTA for the time (docs/training.md)")
