"""``inspect_model``: trace a model on an input shape and explain where it stops fitting."""

from __future__ import annotations

import math
import re
from typing import Callable

import torch
from torch import nn

from cifarctl.errors import UsageError
from cifarctl.trace.diagnose import diagnose, find_warnings
from cifarctl.trace.records import Failure, LayerRecord, Shape, TraceResult
from cifarctl.trace.tracer import Tracer, shapes_of


def parse_input_shape(text: str) -> Shape:
    """``"3x32x32"`` -> ``[1, 3, 32, 32]``; ``"8x3x32x32"`` -> ``[8, 3, 32, 32]``."""
    parts = [p for p in re.split(r"[x×,\s]+", text.strip().lower()) if p]
    if len(parts) not in (3, 4) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise UsageError(f"--input {text!r} is not CxHxW or NxCxHxW with positive sizes, e.g. 3x32x32")
    dims = [int(p) for p in parts]
    return dims if len(dims) == 4 else [1, *dims]


def _trace_once(model: nn.Module, shape: Shape, device: str, name: str) -> TraceResult:
    tracer = Tracer(model)
    inputs = torch.randn(shape, device=device) if device != "meta" else torch.empty(shape, device="meta")
    output = None
    try:
        output = tracer.run(inputs)
    except Exception as exc:  # noqa: BLE001  (the failure is what we report)
        if tracer.failure is None:  # raised outside any tensor op (e.g. a Python error in forward)
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            tracer.failure = Failure(msg, type(exc).__name__, [i for _, i in tracer.stack])
        else:
            tracer.failure.stack = tracer.failure.stack or [i for _, i in tracer.stack]
    records = tracer.records
    _sum_container_macs(records)
    error = None
    if tracer.failure is not None:
        error = diagnose(records, tracer.failure)
        for i in tracer.failure.stack[-1:]:
            records[i].failed = True
    params = list(model.parameters())
    leaf_outputs = [s for r in records if r.kind == "module" and r.leaf and r.output for s in r.output]
    return TraceResult(
        model=name, input=shape, ok=error is None, layers=records,
        total_params=sum(p.numel() for p in params),
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        total_macs=sum(r.macs for r in records if r.kind == "module" and r.leaf),
        activation_bytes=sum(math.prod(s) for s in leaf_outputs) * 4,
        output=shapes_of(output) if error is None else None, error=error,
        warnings=find_warnings(records, tracer.broadcasts), mode=device,
    )


def _inside(record: LayerRecord, parent: LayerRecord) -> bool:
    """Whether ``record`` is a call made inside ``parent``'s call (records come in call order)."""
    return record.depth > parent.depth and (
        not parent.module or record.module == parent.module or record.module.startswith(parent.module + "."))


def _sum_container_macs(records: list[LayerRecord]) -> None:
    """A container's MACs are the sum of the leaf calls made inside it."""
    open_: list[LayerRecord] = []
    for r in records:
        while open_ and not _inside(r, open_[-1]):
            open_.pop()
        if r.kind == "module" and r.leaf:
            for parent in open_:
                parent.macs += r.macs
        if r.kind == "module" and not r.leaf:
            open_.append(r)


def _needs_real_run(result: TraceResult) -> bool:
    """Meta tensors carry no values: data-dependent code fails there and must run for real."""
    return result.error is not None and result.error.cause == "other"


def inspect_model(factory: Callable[[], nn.Module] | nn.Module, input_shape: Shape, name: str = "") -> TraceResult:
    """Trace the model built by ``factory`` (or a model instance) on ``input_shape``.

    Tries the meta device first (no arithmetic); falls back to a real CPU forward for models that
    cannot run on meta tensors. A model instance is traced as it is, on its own device, and left
    as it was. Usage: ``inspect_model(lambda: create_model("vgg16"), [1, 3, 32, 32])``
    """
    if isinstance(factory, nn.Module):
        device = next((p.device.type for p in factory.parameters()), "cpu")
        return _trace_once(factory, input_shape, device, name or type(factory).__name__)
    name = name or getattr(factory, "__name__", "model")
    try:
        with torch.device("meta"):
            model = factory()
        result = _trace_once(model, input_shape, "meta", name)
        if not _needs_real_run(result):
            return result
    except UsageError:
        raise
    except Exception:  # noqa: BLE001  (a model that cannot be built on meta is built on CPU)
        pass
    return _trace_once(factory(), input_shape, "cpu", name)
