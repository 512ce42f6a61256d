"""`cifarctl inspect`: per-layer shapes, parameters and compute, and where a model stops fitting."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer

from cifarctl.cli.options import ModelKwargs
from cifarctl.cli.options import model_kwargs as parse_kwargs
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from cifarctl.cli.options import Json
from cifarctl.cli.render import handle_errors, out_console, print_json
from cifarctl.trace.records import fmt_shape

if TYPE_CHECKING:
    from cifarctl.trace import LayerRecord, TraceResult


@handle_errors
def inspect(
    model: Annotated[str, typer.Argument(help="A model name (vgg16, resnet50), torchvision:NAME, path/to/file.py:Name or package.module:Name.")],
    input_shape: Annotated[str, typer.Option("--input", "-i", help="Input shape CxHxW, or NxCxHxW with its batch.")] = "3x32x32",
    batch: Annotated[Optional[int], typer.Option("--batch", min=1, help="Images in the traced batch (default 2: a batch of 1 hides code that bakes the batch size in).")] = None,
    depth: Annotated[Optional[int], typer.Option("--depth", min=0, help="Show modules nested at most this deep.")] = None,
    num_classes: Annotated[Optional[int], typer.Option("--num-classes", min=1, help="Build the model with this many classes (passed as num_classes=).")] = None,
    model_kwargs: ModelKwargs = None,
    json_output: Json = False,
) -> None:
    """Show each layer's shapes, parameters and MACs; if the shapes stop fitting, say where, why and how to fix it.

    A batch of 2 is traced (--batch to change); MACs and activation memory are per image.

    Exit code 0: the input fits; 1: it does not; 2: bad arguments.

    Examples:

      cifarctl inspect resnet50 --input 3x32x32

      cifarctl inspect my_resnet.py:ResNet50_layer4 --input 3x32x32 --depth 2

      cifarctl inspect torchvision:resnet18 --num-classes 10 --depth 1
    """
    from cifarctl.models.user import resolve_model
    from cifarctl.trace import inspect_model, parse_input_shape

    shape = parse_input_shape(input_shape, batch)
    name, factory = resolve_model(model, num_classes, parse_kwargs(model_kwargs))
    result = inspect_model(factory, shape, name=name)
    if json_output:
        print_json(result.to_json())
    else:
        render(result, out_console(), depth)
    if not result.ok:
        raise typer.Exit(1)


def _human(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _shapes(shapes: list[list[int]] | None) -> str:
    if shapes is None:
        return "—"
    return ", ".join(fmt_shape(s) for s in shapes) or "-"


def _row_name(record: LayerRecord, model_name: str) -> str:
    if record.kind == "op":
        return "  " * record.depth + f"({record.type})"
    if not record.module:
        return model_name.rsplit(":", 1)[-1]
    return "  " * record.depth + record.module.rsplit(".", 1)[-1]


def layer_table(result: TraceResult, depth: int | None = None) -> Table:
    """The per-layer table: tree of module calls (and tensor ops in user modules), shapes, params, MACs."""
    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    for column, justify in (("Layer", "left"), ("Type", "left"), ("Input", "left"), ("Output", "left"),
                            ("Params", "right"), ("MACs", "right")):
        table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for record in result.layers:
        if depth is not None and record.depth > depth and not record.failed:
            continue
        is_op = record.kind == "op"
        style = "bold red" if record.failed else ("dim" if is_op else None)
        kind = ("✗ " if record.failed else "") + record.type
        table.add_row(
            _row_name(record, result.model), kind, _shapes(record.input), _shapes(record.output),
            "" if is_op else f"{record.params:,}", _human(record.macs) if record.macs else "",
            style=style,
        )
    return table


def render(result: TraceResult, console: Console, depth: int | None = None) -> None:
    console.print(f"[bold]{escape(result.model)}[/] on input {fmt_shape(result.input)} (batch {result.input[0]})"
                  + (", traced with a real CPU forward (it cannot run on the meta device)" if result.fallback else ""))
    console.print(layer_table(result, depth))
    console.print(f"Total params: {result.total_params:,} (trainable {result.trainable_params:,})")
    partial = "" if result.ok else ", up to the failure"
    console.print(f"Total MACs per image: {_human(result.total_macs)} ({result.total_macs:,}{partial})")
    console.print(f"Activation memory per image: {result.activation_bytes / 2**20:.2f} MiB (layer outputs, float32)")
    if result.ok:
        console.print(f"Output: [bold green]{_shapes(result.output)}[/]")
    for warning in result.warnings:
        where = warning.module or result.model.rsplit(":", 1)[-1]
        console.print(Text.assemble(("warning ", "bold yellow"), (f"{where}: ", "yellow"), warning.message))
    if result.error is not None:
        error = result.error
        console.print(Text.assemble(("✗ the input does not fit at ", "bold red"),
                                    (f"{error.module or result.model} ({error.type})", "bold red")))
        console.print(Text.assemble(("why: ", "bold"), error.message))
        if error.children:
            inner = ", ".join(f"{c['module'].rsplit('.', 1)[-1]} -> {_shapes(c['output'])}" for c in error.children)
            console.print(Text.assemble(("shapes: ", "bold"), f"in {_shapes(error.input)}; {inner}"))
        console.print(Text.assemble(("fix: ", "bold green"), error.hint))
