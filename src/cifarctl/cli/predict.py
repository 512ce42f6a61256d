"""`cifarctl predict`: what a trained model says about your own pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cifarctl.cli.options import Ckpt, Device, Json, ModelArg, ModelKwargs, NumClasses, checkpoint_path
from cifarctl.cli.options import model_kwargs as parse_kwargs
from cifarctl.cli.render import err_console, handle_errors, noted_warnings, out_console, print_json


@handle_errors
def predict(
    model: ModelArg,
    images: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG, anything PIL reads) or folders (read recursively, in sorted order).")],
    ckpt: Ckpt = None,
    model_kwargs: ModelKwargs = None,
    num_classes: NumClasses = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Classes to show per image.")] = 3,
    tta: Annotated[Optional[bool], typer.Option("--tta/--no-tta", help="Average over flips and 1-pixel shifts (TTA level 2). Default: the level the checkpoint's run reported with.")] = None,
    device: Device = "cpu",
    json_output: Json = False,
) -> None:
    """Predict the class of your own images with a trained checkpoint.

    Each image is converted to RGB (transparency onto white, 16-bit grey scaled to 8 bits), its
    shorter side resized to 32 pixels (bicubic, antialiased) and the centre 32x32 kept, then
    normalised as the model's training was. An unreadable image is one line on stderr; the others
    are still predicted, and the exit code is 1.

    Examples:

      cifarctl predict airbench94 cat.jpg dog.png

      cifarctl predict vgg16 --ckpt vgg16_250.pt photos/ --top-k 1 --json
    """
    from cifarctl.models.spec import check_spec
    from cifarctl.serving.inference import predict as run_predict

    check_spec(model)  # an unknown name fails here, with close matches
    path = checkpoint_path(model, ckpt)
    err = err_console()
    with noted_warnings(err):
        result = run_predict(model, path, images, top_k=top_k, tta=None if tta is None else (2 if tta else 0),
                             device=device, model_kwargs=parse_kwargs(model_kwargs), num_classes=num_classes)
    for failure in result.failures:
        err.print(f"[bold red]error:[/] {failure}", markup=True, highlight=False)
    if json_output:
        data = result.to_dict()
        print_json({"model": data["model"], "checkpoint": data["checkpoint"], "predictions": data["predictions"]})
    else:
        table = Table(show_edge=False, header_style="bold", title=f"{model} ({path})", title_justify="left")
        table.add_column("image", overflow="fold")
        table.add_column("class")
        table.add_column("probability", justify="right")
        if top_k > 1:
            table.add_column("next", overflow="fold")
        for p in result.predictions:
            (name, prob), rest = p.top[0], p.top[1:]
            row = [p.image, name, f"{100 * prob:.1f}%"]
            if top_k > 1:
                row.append(", ".join(f"{c} {100 * q:.1f}%" for c, q in rest))
            table.add_row(*row)
        out_console().print(table)
    if result.failures:
        raise typer.Exit(1)
