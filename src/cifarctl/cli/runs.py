"""`cifarctl runs`: the training runs under the checkpoints root."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from cifarctl import paths
from cifarctl.cli.options import Json
from cifarctl.cli.render import err_console, handle_errors, out_console, print_json


@handle_errors
def runs(
    model: Annotated[Optional[str], typer.Argument(help="Only this model's runs.")] = None,
    json_output: Json = False,
) -> None:
    """List runs: model, epochs, best and last test accuracy, and folder (newest last).

    Runs trained with --out elsewhere are listed too (they are recorded in the runs index).
    "chosen on" says which split picked best.pt: test (the default) or val (--val-split).

    Examples:

      cifarctl runs

      cifarctl runs resnet50 --json
    """
    from cifarctl.run.index import list_runs

    found = list_runs(model)
    if json_output:
        print_json([r.to_dict() for r in found])
        return
    if not found:
        err_console().print(f"no runs under {paths.runs_root()} yet: `cifarctl train MODEL` makes one")
        return
    table = Table(show_edge=False, header_style="bold")
    for column, justify in (("model", "left"), ("epochs", "right"), ("steps", "right"), ("best acc", "right"),
                            ("chosen on", "left"), ("last acc", "right"), ("modified", "left"), ("folder", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for r in found:
        planned = f"/{r.planned_epochs}" if r.planned_epochs else ""
        table.add_row(r.model, f"{r.epochs:g}{planned}", f"{r.global_step:,}",
                      f"{r.best_accuracy:.2f}%" if r.best_accuracy is not None else "-", r.best_selected_on,
                      f"{r.last_accuracy:.2f}%" if r.last_accuracy is not None else "-",
                      r.modified.strftime("%Y-%m-%d %H:%M"),
                      str(r.path) + (f" [red](damaged: {', '.join(r.damaged)})[/]" if r.damaged else ""))
    out_console().print(table)
    if any(r.damaged for r in found):
        err_console().print("[yellow]a damaged config.json or metrics.jsonl does not stop a run: "
                            "`cifarctl train MODEL --resume FOLDER` continues from its checkpoint and writes "
                            "config.json again[/]")
