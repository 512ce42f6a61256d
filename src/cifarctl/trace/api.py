"""``inspect_model``: trace a model on an input shape and explain where it stops fitting."""

from __future__ import annotations

import math
import re
from typing import Callable

import torch
from torch import nn

from cifarctl.errors import UsageError
from cifarctl.trace.diagnose import diagnose, find_warnings
from cifarctl.trace.records import Shape, TraceResult
from cifarctl.trace.tracer import Tracer, activation_bytes, shapes_of

DEFAULT_BATCH = 2   # as torchinfo: a batch of 1 hides code that bakes the batch size in


def parse_input_shape(text: str, batch: int | None = None) -> Shape:
    """``"3x32x32"`` -> ``[2, 3, 32, 32]`` (``batch`` images, default 2); ``"8x3x32x32"`` -> ``[8, 3, 32, 32]``."""
    parts = [p for p in re.split(r"[x×,\s]+", text.strip().lower()) if p]
    if len(parts) not in (3, 4) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise UsageError(f"--input {text!r} is not CxHxW or NxCxHxW with positive sizes, e.g. 3x32x32")
    if batch is not None and batch < 1:
        raise UsageError(f"--batch {batch} must be at least 1")
    dims = [int(p) for p in parts]
    if len(dims) == 4:
        if batch is not None and batch != dims[0]:
            raise UsageError(f"--input {text!r} gives batch {dims[0]} but --batch says {batch}: give one of them")
        return dims
    return [batch or DEFAULT_BATCH, *dims]


def _trace_once(model: nn.Module, shape: Shape, device: str, name: str) -> TraceResult:
    tracer = Tracer(model, batch=shape[0])
    inputs = torch.randn(shape, device=device) if device != "meta" else torch.empty(shape, device="meta")
    output = None
    try:
        output = tracer.run(inputs)
    except Exception:  # noqa: BLE001  (the failure is what we report; tracer.failure describes it)
        pass
    records = tracer.records
    error = None
    if tracer.failure is not None:
        error = diagnose(records, tracer.failure, tracer.batch_reshapes, shape[0])
        for i in tracer.failure.stack[-1:]:
            records[i].failed = True
    params = list(model.parameters())
    root = records[0] if records else None
    return TraceResult(
        model=name, input=shape, ok=error is None, layers=records,
        total_params=sum(p.numel() for p in params),
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        total_macs=root.macs if root is not None else 0,
        activation_bytes=activation_bytes(records, shape[0]),
        output=shapes_of(output) if error is None else None, error=error,
        warnings=find_warnings(records, tracer.broadcasts, tracer.batch_reshapes, shape[0],
                               shapes_of(output) if error is None else None, shape),
        mode=device, failure=tracer.failure,
    )


def _needs_real_run(result: TraceResult) -> bool:
    """Whether a failure on meta may be meta's, not the model's: then a real CPU forward decides.

    Meta tensors carry no values (data-dependent code fails), some ops have no meta kernel, and a
    tensor made on another device meets meta ones. Only a shape failure among meta tensors alone
    is trusted as the model's own.
    """
    if result.error is None:
        return False
    failure = result.failure
    meta_specific = failure is not None and (failure.devices not in ([], ["meta"])
                                             or "meta" in failure.message.lower())
    return result.error.cause == "other" or meta_specific


# A real CPU forward is faster than meta for ordinary sizes: meta tensors need torch's meta
# registrations, and meta's BatchNorm kernel is a Python decomposition whose first call imports
# torch._dynamo (together two seconds on a 2-core machine), while ResNet-50 at 2x3x224x224 is built
# and run for real in under half a second. Larger inputs go to meta.
REAL_FORWARD_MAX_PIXELS = 2 * 224 * 224     # batch x height x width


def _real_forward_is_cheap(shape: Shape) -> bool:
    return (shape[0] * math.prod(shape[2:]) if len(shape) > 2 else math.prod(shape)) <= REAL_FORWARD_MAX_PIXELS


def inspect_model(factory: Callable[[], nn.Module] | nn.Module, input_shape: Shape, name: str = "",
                  device: str | None = None) -> TraceResult:
    """Trace the model built by ``factory`` (or a model instance) on ``input_shape``.

    ``device=None`` chooses: a real CPU forward for ordinary sizes (up to 2x224x224 pixels), the
    meta device (shapes only, no arithmetic) beyond. ``"meta"`` or ``"cpu"``
    forces one. A failure on meta that may be meta's own (values needed, a tensor on another
    device) is settled by a real CPU forward. A model instance is traced as it is, on its own
    device, and left as it was. Results are the same whichever way it runs. MACs and activation
    memory are per image; the batch (``input_shape[0]``) shows in the shapes.
    Usage: ``inspect_model(lambda: create_model("vgg16"), [2, 3, 32, 32])``
    """
    if device not in (None, "meta", "cpu"):
        raise ValueError(f"device must be None, 'meta' or 'cpu', not {device!r}")
    if isinstance(factory, nn.Module):
        own = next((p.device.type for p in factory.parameters()), "cpu")
        return _trace_once(factory, input_shape, own, name or type(factory).__name__)
    name = name or getattr(factory, "__name__", "model")
    if device == "meta" or (device is None and not _real_forward_is_cheap(input_shape)):
        try:
            with torch.device("meta"):
                model = factory()
            result = _trace_once(model, input_shape, "meta", name)
            if not _needs_real_run(result):
                return result
        except Exception:  # noqa: BLE001  (a model that cannot be built on meta is built on CPU; a real
            pass           # error in its constructor is raised from there)
        result = _trace_once(factory(), input_shape, "cpu", name)
        result.fallback = True
        return result
    return _trace_once(factory(), input_shape, "cpu", name)
