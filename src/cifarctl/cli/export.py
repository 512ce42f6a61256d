"""`cifarctl export`: a trained model as ONNX, safetensors or TorchScript, for use outside cifarctl."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cifarctl.cli.options import Ckpt, Json, ModelArg, ModelKwargs, NumClasses, checkpoint_path
from cifarctl.cli.options import model_kwargs as parse_kwargs
from cifarctl.cli.render import err_console, handle_errors, noted_warnings, out_console, print_json


@handle_errors
def export(
    model: ModelArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="The file to write (replaced atomically).")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="onnx (dynamic batch axis), safetensors (state_dict) or torchscript.")] = "onnx",
    ckpt: Ckpt = None,
    model_kwargs: ModelKwargs = None,
    num_classes: NumClasses = None,
    json_output: Json = False,
) -> None:
    """Export a checkpoint to ONNX, safetensors or TorchScript, with the model name, classes, mean and std.

    The exported model takes N x 3 x 32 x 32 float32 images, normalised with the mean and std it
    carries, and returns logits. ONNX is checked against torch with onnxruntime on a random batch.
    ONNX and safetensors need the export extra: pip install 'cifarctl[export]'.

    Examples:

      cifarctl export airbench94 --ckpt --format onnx --out airbench94.onnx

      cifarctl export vgg16 --ckpt vgg16_250.pt --format safetensors --out vgg16.safetensors
    """
    from cifarctl.models.spec import check_spec
    from cifarctl.serving.export import export_model
    from cifarctl.serving.inference import load_trained

    check_spec(model)  # an unknown name fails here, with close matches
    path = checkpoint_path(model, ckpt)
    with noted_warnings(err_console()):
        trained = load_trained(model, path, "cpu", parse_kwargs(model_kwargs), num_classes)
    result = export_model(trained, fmt.lower(), out.expanduser())
    if json_output:
        print_json({"model": model, "checkpoint": str(path), **result.to_dict()})
        return
    check = (f"; onnxruntime matches torch (max abs difference {result.max_abs_diff:.2e})"
             if result.max_abs_diff is not None else
             "; install onnxruntime to check it against torch" if fmt == "onnx" else "")
    out_console().print(f"{model} from {path} -> {result.path} ({result.format}, {result.bytes / 2**20:.1f} MiB){check}")
    if result.max_abs_diff is not None and result.max_abs_diff > 1e-3:
        err_console().print(f"[bold red]error:[/] onnxruntime differs from torch by {result.max_abs_diff:.2e} (> 1e-3)")
        raise typer.Exit(1)
