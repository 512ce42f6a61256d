"""`cifarctl evaluate`: test accuracy, per-class accuracy and the confusion matrix of a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from cifarctl.cli.options import (BatchSize, Ckpt, DataChoice, Device, Json, ModelArg, ModelKwargs, NumClasses, Offline,
                                  TtaFraction, Verify, checkpoint_path)
from cifarctl.cli.options import model_kwargs as parse_kwargs
from cifarctl.cli.render import RichProgress, err_console, handle_errors, noted_warnings, out_console, print_json

if TYPE_CHECKING:
    from cifarctl.evaluation import EvalResult


@handle_errors
def evaluate(
    model: ModelArg,
    ckpt: Ckpt = None,
    model_kwargs: ModelKwargs = None,
    num_classes: NumClasses = None,
    device: Device = "auto",
    batch_size: BatchSize = 100,
    data: DataChoice = "cifar10",
    offline: Offline = False,
    verify: Verify = False,
    amp: Annotated[bool, typer.Option("--amp/--no-amp", help="Mixed precision (bf16): faster, may differ from fp32 by a few predictions; a departure from the course's fp32 loop.")] = False,
    tta: Annotated[Optional[str], typer.Option("--tta", help="Test-time augmentation: 0 off, 1 average over flips, 2 over flips and 1-pixel shifts, selective (level 2 for the least confident images only). Default: what the checkpoint's run used (the model's recipe).")] = None,
    tta_fraction: TtaFraction = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Also draw the confusion matrix into this PNG file.")] = None,
    json_output: Json = False,
) -> None:
    """Evaluate a checkpoint on the 10,000 test images.

    Examples:

      cifarctl evaluate vgg16 --ckpt                  (the newest vgg16 checkpoint)

      cifarctl evaluate resnet50 --ckpt resnet50_285.pt --json

      cifarctl evaluate airbench94 --ckpt --tta 2      (flip and shift test-time augmentation)

      cifarctl evaluate my_resnet.py:ResNet50 --ckpt resnet50_285.pt   (your own code, the course's weights)
    """
    err = err_console()
    from cifarctl.cli.data import load_data
    from cifarctl.device import describe_device, resolve_device
    from cifarctl.evaluation import evaluate as run_evaluation
    from cifarctl.models.spec import check_spec
    from cifarctl.run.config import parse_tta

    check_spec(model)  # an unknown name fails here, before any data is loaded
    kwargs = parse_kwargs(model_kwargs)
    chosen = resolve_device(device)  # and a device that is not there
    path = checkpoint_path(model, ckpt)
    dataset = load_data(data, offline, quiet=json_output, verify=verify)
    err.print(f"evaluating {model} from {path} on {describe_device(chosen)}")
    with noted_warnings(err):
        result = run_evaluation(model, path, dataset, device=device, batch_size=batch_size or 100, amp=amp,
                                progress=RichProgress(err), tta=parse_tta(tta), tta_fraction=tta_fraction,
                                model_kwargs=kwargs, num_classes=num_classes)
    if plot is not None:
        from cifarctl.plots import plot_confusion

        plot_confusion(result.confusion, result.classes, plot, title=f"{model}: {result.accuracy:.2f}% ({path.name})")
        err.print(f"confusion matrix drawn in {plot}")
    if json_output:
        print_json(result.to_dict())
    else:
        render_result(result)


def render_result(result: EvalResult) -> None:
    console = out_console()
    tta = f" (TTA level {result.extra['tta_level']})" if result.extra.get("tta") else ""
    console.print(f"[bold]{result.model}[/] test accuracy [bold green]{result.accuracy:.2f}%[/]{tta} "
                  f"· loss {result.loss:.4f} · {result.images:,} images")
    per_class = Table(title="per class", title_justify="left", show_edge=False)
    per_class.add_column("class")
    per_class.add_column("accuracy", justify="right")
    per_class.add_column("loss", justify="right")
    per_class.add_column("images", justify="right")
    for i, (name, acc) in enumerate(result.per_class.items()):
        per_class.add_row(name, f"{acc:.1f}%", f"{result.class_loss[i]:.3f}", f"{sum(result.confusion[i]):,}")
    console.print(per_class)
    console.print(confusion_table(result))


def confusion_table(result: EvalResult) -> Table:
    """Rows are true classes, columns predictions; the diagonal is highlighted."""
    table = Table(title="confusion matrix (rows: true class, columns: predicted)", title_justify="left",
                  show_edge=False, pad_edge=False)
    table.add_column("")
    for name in result.classes:
        table.add_column(name[:5], justify="right")
    for i, name in enumerate(result.classes):
        cells = [f"[bold green]{n}[/]" if i == j else (str(n) if n else "[dim]0[/]")
                 for j, n in enumerate(result.confusion[i])]
        table.add_row(name, *cells)
    return table
