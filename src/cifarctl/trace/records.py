"""Plain data that tracing produces and that diagnosis and rendering read."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

Shape = list[int]


def fmt_shape(shape: Shape | None, batch: bool = True) -> str:
    """``[1, 256, 6, 6]`` -> ``"1x256x6x6"`` (or ``"256x6x6"`` without the batch dimension)."""
    if shape is None:
        return "?"
    dims = shape[1:] if not batch and len(shape) > 1 else shape
    return "x".join(str(d) for d in dims) if dims else "scalar"


@dataclass
class LayerRecord:
    """One module call, or one tensor operation inside a user module's forward (``kind="op"``)."""

    module: str                      # dotted path; "" is the model itself
    type: str                        # class name, or the operation ("add", "cat", "view", ...)
    depth: int
    kind: str = "module"             # "module" or "op"
    input: list[Shape] = field(default_factory=list)
    output: list[Shape] | None = None  # None: it did not finish
    params: int = 0                  # parameters of the module and its children
    macs: int = 0                    # multiply-accumulates (leaves; containers sum their children)
    leaf: bool = True
    failed: bool = False             # the failure happened in this call
    config: dict[str, Any] = field(default_factory=dict)  # kernel/stride/padding/channels of conv-like layers

    def to_json(self) -> dict[str, Any]:
        return {"module": self.module, "type": self.type, "kind": self.kind, "input": self.input,
                "output": self.output, "params": self.params, "macs": self.macs}


@dataclass
class Failure:
    """What was running when the forward pass raised."""

    message: str
    exception: str
    stack: list[int]                 # indices of the unfinished module records, outermost first
    op: str | None = None            # the tensor operation that raised, if it was one we watch
    operands: list[Shape] = field(default_factory=list)
    producers: list[str | None] = field(default_factory=list)  # which module made each operand


@dataclass
class Diagnosis:
    """The plain-words account of a failure."""

    module: str
    type: str
    message: str
    hint: str
    input: list[Shape] = field(default_factory=list)
    children: list[dict[str, Any]] = field(default_factory=list)
    operands: list[dict[str, Any]] = field(default_factory=list)
    cause: str = "shape"
    exception: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Warning_:
    """A silent problem: the model runs, but probably not as intended."""

    module: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"module": self.module, "message": self.message}


@dataclass
class TraceResult:
    """Everything ``inspect`` reports. ``ok`` is False when the input does not fit the model."""

    model: str
    input: Shape
    ok: bool
    layers: list[LayerRecord]
    total_params: int
    trainable_params: int
    total_macs: int
    activation_bytes: int
    output: list[Shape] | None
    error: Diagnosis | None = None
    warnings: list[Warning_] = field(default_factory=list)
    mode: str = "meta"               # "meta" (no arithmetic) or "cpu" (a real forward pass)

    def to_json(self) -> dict[str, Any]:
        output = self.output[0] if self.output and len(self.output) == 1 else self.output
        return {
            "model": self.model, "input": self.input, "ok": self.ok, "mode": self.mode,
            "layers": [r.to_json() for r in self.layers], "total_params": self.total_params,
            "trainable_params": self.trainable_params, "total_macs": self.total_macs,
            "activation_bytes": self.activation_bytes, "output": output,
            "error": self.error.to_json() if self.error else None,
            "warnings": [w.to_json() for w in self.warnings],
        }
