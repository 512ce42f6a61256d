"""`cifarctl evaluate`: test accuracy, per-class accuracy and the confusion matrix of a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from cifarctl.cli.options import (BatchSize, Ckpt, ConfigFile, DataChoice, Device, Json, ModelKwargs, ModelOrConfig,
                                  NumClasses, Offline, TtaFraction, Verify, checkpoint_path)
from cifarctl.cli.options import model_kwargs as parse_kwargs
from cifarctl.cli.render import RichProgress, err_console, handle_errors, noted_warnings, out_console, print_json

if TYPE_CHECKING:
    from cifarctl.evaluation import EvalResult


@handle_errors
def evaluate(
    model: ModelOrConfig = None,
    ckpt: Ckpt = None,
    config: ConfigFile = None,
    model_kwargs: ModelKwargs = None,
    num_classes: NumClasses = None,
    device: Device = None,
    batch_size: BatchSize = None,
    data: DataChoice = None,
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

      cifarctl evaluate --config RUN/config.toml      (RUN's model and TTA, its last.pt)
    """
    err = err_console()
    from cifarctl.cli.data import load_data
    from cifarctl.device import describe_device, resolve_device
    from cifarctl.evaluation import evaluate as run_evaluation
    from cifarctl.models.spec import check_spec
    from cifarctl.run.config import parse_tta

    if config is not None:
        model, ckpt, found = from_config_file(config, model, ckpt)
        device = device or found.get("device")  # --device auto too overrides the file's
        tta = tta if tta is not None else found.get("tta")
        tta_fraction = tta_fraction if tta_fraction is not None else found.get("tta_fraction")
        batch_size, data = batch_size or found.get("eval_batch_size"), data or found.get("data")
        num_classes = num_classes if num_classes is not None else found.get("num_classes")
        model_kwargs = model_kwargs or [f"{k}={v!r}" for k, v in (found.get("model_options") or {}).items()]
    if model is None:
        from cifarctl.errors import UsageError

        raise UsageError("name the MODEL to evaluate, or give --config FILE with a model key")
    data = data or "cifar10"
    check_spec(model)  # an unknown name fails here, before any data is loaded
    kwargs = parse_kwargs(model_kwargs)
    device = device or "auto"
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


def from_config_file(config: Path, model: str | None, ckpt: str | None) -> tuple[str | None, str | None, dict]:
    """MODEL and --ckpt with a --config file's values under them: a run's config.toml names its model, and
    its folder's last.pt is the checkpoint unless --ckpt says another. Its other keys are a run's settings
    (known, so accepted); evaluate takes device, data, tta, tta_fraction, eval_batch_size and the model's."""
    from cifarctl.cli.options import config_values
    from cifarctl.run.config_file import train_keys

    from cifarctl.run.config import NULL

    found = {k: v for k, v in config_values(config, train_keys(), "evaluate").items() if v is not NULL}
    beside = Path(config).expanduser().parent / "last.pt"
    if ckpt is None and beside.is_file() and model in (None, found.get("model")):
        ckpt = str(beside)
    return model or found.get("model"), ckpt, found


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
