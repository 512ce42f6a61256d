"""`cifarctl runs`: the training runs and groups of seeds, one group's seeds, and two groups compared."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.table import Table

from cifarctl import paths
from cifarctl.cli.options import Json
from cifarctl.cli.render import comparison_line, err_console, handle_errors, out_console, print_json

if TYPE_CHECKING:
    from cifarctl.run.index import GroupInfo, RunInfo


@handle_errors
def runs(
    what: Annotated[Optional[list[str]], typer.Argument(
        help="MODEL (only its runs), a GROUP folder (its seeds), or `compare A B` (two groups, or runs as groups "
             "of one).", show_default=False)] = None,
    json_output: Json = False,
) -> None:
    """List runs and groups of seeds (newest last), show one group's seeds, or compare two groups.

    A run: model, epochs, best and last test accuracy, and folder ("chosen on": the split that picked
    best.pt, test or val with --val-split). A group (`train --seeds N`): model, seeds finished, mean
    accuracy ± std with its 95% interval, and state. Runs and groups trained with --out elsewhere are
    listed too (they are recorded in the runs index).

    Examples:

      cifarctl runs

      cifarctl runs resnet50 --json

      cifarctl runs runs/airbench94_quarter/20261203-1200        (a group's seeds)

      cifarctl runs compare GROUP_A GROUP_B                       (B against A: difference, 95% CI, Welch's p)
    """
    from cifarctl.run.group import is_group

    args = list(what or [])
    if args[:1] == ["compare"]:
        _compare(args[1:], json_output)
    elif len(args) > 1:
        from cifarctl.errors import UsageError

        raise UsageError(f"`cifarctl runs` takes one MODEL or GROUP, or `compare A B`; got {' '.join(args)}")
    elif args and is_group(Path(args[0])):
        _show_group(Path(args[0]), json_output)
    else:
        _list(args[0] if args else None, json_output)


def _list(model: str | None, json_output: bool) -> None:
    from cifarctl.run.index import list_groups, list_runs, list_studies

    found, groups, studies = list_runs(model), list_groups(model), list_studies(model)
    if json_output:
        print_json([r.to_dict() for r in found] + [g.to_dict() for g in groups] + [s.to_dict() for s in studies])
        return
    if not found and not groups and not studies:
        err_console().print(f"no runs under {paths.runs_root()} yet: `cifarctl train MODEL` makes one")
        return
    if found:
        out_console().print(_runs_table(found))
    if groups:
        out_console().print(_groups_table(groups))
    if studies:
        out_console().print(_studies_table(studies))
    if any(r.damaged for r in found):
        err_console().print("[yellow]a damaged config.json or metrics.jsonl does not stop a run: "
                            "`cifarctl train MODEL --resume FOLDER` continues from its checkpoint and writes "
                            "config.json again[/]")


def _runs_table(found: list[RunInfo]) -> Table:
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
    return table


def _groups_table(groups: list[GroupInfo]) -> Table:
    table = Table(title="groups of seeds (`cifarctl runs GROUP` shows one's seeds)", title_justify="left",
                  show_edge=False, header_style="bold")
    for column, justify in (("model", "left"), ("n", "right"), ("test acc (mean ± std)", "right"),
                            ("95% CI", "right"), ("state", "left"), ("modified", "left"), ("folder", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for g in groups:
        accuracy = "-" if g.mean is None else f"{g.mean:.2f}%" + (f" ± {g.std:.2f}" if g.std is not None else "")
        interval = f"{g.ci95[0]:.2f}-{g.ci95[1]:.2f}" if g.ci95 else "-"
        state = f"[red]{g.state}[/]" if g.state == "damaged" else g.state
        table.add_row(g.model, f"{g.n}/{g.seeds}", accuracy, interval, state, g.modified.strftime("%Y-%m-%d %H:%M"),
                      str(g.path))
    return table


def _studies_table(studies: list[Any]) -> Table:
    table = Table(title="studies of `cifarctl tune` (each holds best.toml and trials.csv)", title_justify="left",
                  show_edge=False, header_style="bold")
    for column, justify in (("model", "left"), ("trials", "left"), ("best held-out acc", "right"),
                            ("modified", "left"), ("folder", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for s in studies:
        counts = ", ".join(f"{n} {state}" for state, n in s.trials.items()) or "none yet"
        table.add_row(s.model, counts, f"{s.best:.2f}%" if s.best is not None else "-",
                      s.modified.strftime("%Y-%m-%d %H:%M"), str(s.path))
    return table


def _show_group(folder: Path, json_output: bool) -> None:
    from cifarctl.run.group import read_group

    record = read_group(folder)
    if json_output:
        print_json({"group_dir": str(folder), "model": record.model, "state": record.state, "seeds": record.seeds,
                    "runs": record.runs, "summary": record.summary})
        return
    render_group(record.model, record.runs, record.summary, record.state, len(record.seeds))


def render_group(model: str, runs: list[dict[str, Any]], summary: dict[str, Any] | None, state: str,
                 seeds: int) -> None:
    """A group's seeds as a table, then its summary (and its target's test)."""
    from cifarctl.stats import Summary

    table = Table(title=f"{model}: {len(runs)} of {seeds} seeds ({state})", title_justify="left", show_edge=False,
                  header_style="bold")
    for column in ("seed", "test acc", "test loss", "epochs", "seconds"):
        table.add_column(column, justify="right")
    for r in runs:
        accuracy = f"{r['test_accuracy']:.2f}%" if r["test_accuracy"] is not None else "-"
        loss = f"{r['test_loss']:.4f}" if r["test_loss"] is not None else "-"
        table.add_row(str(r["seed"]), accuracy, loss, f"{r['epochs']:.2f}", f"{r['seconds']:,.1f}")
    out_console().print(table)
    if summary is not None:
        shown = Summary(**{**summary, "ci95": tuple(summary["ci95"]) if summary["ci95"] else None})
        seconds = f", mean time {shown.seconds_mean:,.1f} s" if shown.seconds_mean is not None else ""
        out_console().print(f"[bold]{shown.describe()}[/]{seconds}")
        if shown.target is not None:
            out_console().print(shown.describe_target())


def _compare(args: list[str], json_output: bool) -> None:
    from cifarctl.errors import UsageError
    from cifarctl.run.compare import compare_folders

    if len(args) != 2:
        raise UsageError("`cifarctl runs compare A B` takes two folders: groups of seeds, or runs (a group of one)")
    result = compare_folders(Path(args[0]), Path(args[1]))
    if json_output:
        print_json(result.to_dict())
        return
    out_console().print(comparison_line(result))
    out_console().print(f"[bold]{result.sentence}[/]")
