"""Take a trained model out of cifarctl: ONNX (dynamic batch), safetensors, TorchScript.

Every format carries what using the model needs besides its weights: the model name, the class
names, and the mean and std that normalise its input (ONNX as metadata_props, safetensors as its
metadata, TorchScript as an extra file ``cifarctl.json``). Inputs are N x 3 x 32 x 32 float32,
already normalised; outputs are logits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cifarctl.atomic import atomic_path
from cifarctl.errors import CifarctlError, UsageError, first_line
from cifarctl.serving.inference import SIZE, TrainedModel

FORMATS = ("onnx", "safetensors", "torchscript")
EXTRA = "pip install 'cifarctl[export]'"


@dataclass
class ExportResult:
    path: Path
    format: str
    bytes: int
    max_abs_diff: float | None = None   # ONNX only: onnxruntime against torch on a random batch
    checked_with: str | None = None     # "onnxruntime" when that check ran

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "format": self.format, "bytes": self.bytes,
                "max_abs_diff": self.max_abs_diff, "checked_with": self.checked_with}


def model_info(trained: TrainedModel) -> dict[str, Any]:
    """What travels with the weights."""
    return {"model": trained.name, "classes": list(trained.classes), "mean": list(trained.mean),
            "std": list(trained.std), "input": f"Nx3x{SIZE}x{SIZE} float32, normalised", "producer": "cifarctl"}


def metadata(trained: TrainedModel) -> dict[str, str]:
    """``model_info`` as strings, the form ONNX and safetensors metadata take (lists as JSON)."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in model_info(trained).items()}


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"{module} is not installed: {EXTRA}") from None


def _onnx(trained: TrainedModel, example: torch.Tensor, tmp: Path) -> None:
    _require("onnxscript")   # torch's exporter needs it
    onnx = _require("onnx")
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    try:
        torch.onnx.export(trained.model, (example,), str(tmp), input_names=["image"], output_names=["logits"],
                          dynamic_shapes=({0: batch},), dynamo=True, external_data=False, verbose=False)
    except Exception as exc:  # noqa: BLE001  (the exporter raises many types)
        raise CifarctlError(f"ONNX export of {trained.name} failed: {first_line(exc)[:200]}; its forward does not "
                            "trace to ONNX: export --format safetensors (the weights) or torchscript instead") from None
    proto = onnx.load(str(tmp))
    for key, value in metadata(trained).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(tmp))


def check_onnx(trained: TrainedModel, path: Path, batch: int = 5, seed: int = 0) -> float | None:
    """Largest |onnxruntime - torch| over the logits of a random batch; None without onnxruntime."""
    try:
        import onnxruntime
    except ImportError:
        return None
    x = torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.inference_mode():
        want = trained.model(x.to(trained.device)).float().cpu().numpy()
    return float(abs(got - want).max())


def export_model(trained: TrainedModel, fmt: str, out: Path) -> ExportResult:
    """Write ``trained`` to ``out`` in ``fmt`` (atomically: a partial file never has the name ``out``).

    ONNX is checked against torch with onnxruntime when that is installed (``max_abs_diff``).
    Usage: ``export_model(load_trained("airbench94", "last.pt"), "onnx", Path("airbench94.onnx"))``
    """
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder: give a file name, e.g. {out / (trained.name + '.' + fmt)}")
    model = trained.model.float().eval()
    example = torch.zeros(2, 3, SIZE, SIZE, device=trained.device)
    with atomic_path(out) as tmp:
        if fmt == "onnx":
            _onnx(trained, example, tmp)
        elif fmt == "safetensors":
            safetensors_torch = _require("safetensors.torch")
            safetensors_torch.save_model(model, str(tmp), metadata=metadata(trained))
        else:
            import warnings

            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore", FutureWarning)   # torch.jit's deprecation notice
                try:
                    scripted = torch.jit.trace(model, example)
                except Exception as exc:  # noqa: BLE001  (the tracer raises many types)
                    raise CifarctlError(f"TorchScript export of {trained.name} failed: {first_line(exc)[:200]}; "
                                        "export --format safetensors (the weights) instead") from None
                torch.jit.save(scripted, str(tmp), _extra_files={"cifarctl.json": json.dumps(model_info(trained))})
    result = ExportResult(out, fmt, out.stat().st_size)
    if fmt == "onnx":
        result.max_abs_diff = check_onnx(trained, out)
        result.checked_with = "onnxruntime" if result.max_abs_diff is not None else None
    return result
