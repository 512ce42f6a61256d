"""Plain data that tracing produces and that diagnosis and rendering read."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

Shape = list[int]

# Where a tensor came from, as diagnosis names it (a module's dotted path is the fourth kind).
INPUT = "<input>"          # the running module's own input: an identity shortcut
CONSTANT = "<constant>"    # made in forward from no tensor (torch.ones(...), torch.tensor(...))
PARAMETER = "<parameter:"  # prefix: "<parameter:ln.weight>", also for values computed from parameters only
COMPUTED = "<computed:"    # prefix: "<computed:relu>", a functional op's result in forward

# What the MAC columns count, said in --json and docs/inspect.md.
MACS_COUNTED = ("multiply-accumulates per image = torch.utils.flop_counter FLOPs / 2: convolutions, linear layers, "
                "matmul/bmm/einsum and attention; normalisation, activations, pooling and elementwise ops count 0")


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
    depth: int                       # how deep in the call stack (the model's own call is 0)
    kind: str = "module"             # "module" or "op"
    parent: int | None = None        # index of the record of the call this one was made in
    input: list[Shape] = field(default_factory=list)
    output: list[Shape] | None = None  # None: it did not finish
    params: int = 0                  # parameters of the module and its children
    macs: int = 0                    # multiply-accumulates per image, everything done inside this call
    leaf: bool = True
    failed: bool = False             # the failure happened in this call
    config: dict[str, Any] = field(default_factory=dict)  # kernel/stride/padding/channels of conv-like layers

    def to_json(self) -> dict[str, Any]:
        return {"module": self.module, "type": self.type, "kind": self.kind, "parent": self.parent,
                "input": self.input, "output": self.output, "params": self.params, "macs": self.macs}


@dataclass
class Failure:
    """What was running when the forward pass raised."""

    message: str
    exception: str
    stack: list[int]                 # indices of the unfinished module records, outermost first
    op: str | None = None            # the tensor operation that raised, if it was one we watch
    operands: list[Shape] = field(default_factory=list)
    producers: list[str | None] = field(default_factory=list)  # where each operand came from (Tracer.source)
    devices: list[str] = field(default_factory=list)            # devices of the tensors the op was given
    call: str = ""                                               # a reshape as written: "x.view(1, -1)"


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
    total_macs: int                  # multiply-accumulates of one image (MACS_COUNTED)
    activation_bytes: int            # float32 bytes of one image's leaf-module outputs
    output: list[Shape] | None
    error: Diagnosis | None = None
    warnings: list[Warning_] = field(default_factory=list)
    mode: str = "meta"               # "meta" (no arithmetic) or "cpu" (a real forward pass)
    fallback: bool = False           # run on the CPU because the model could not run on meta
    failure: Failure | None = field(default=None, repr=False)   # the raw failure behind ``error``

    def to_json(self) -> dict[str, Any]:
        output = self.output[0] if self.output and len(self.output) == 1 else self.output
        return {
            "model": self.model, "input": self.input, "ok": self.ok, "mode": self.mode, "fallback": self.fallback,
            "layers": [r.to_json() for r in self.layers], "total_params": self.total_params,
            "trainable_params": self.trainable_params, "batch": self.input[0] if self.input else 1,
            "total_macs": self.total_macs, "macs_counted": MACS_COUNTED,
            "activation_bytes": self.activation_bytes, "output": output,
            "error": self.error.to_json() if self.error else None,
            "warnings": [w.to_json() for w in self.warnings],
        }
