"""Run a model once with hooks and record every module call and the tensor ops between them.

Forward pre/post hooks give one record per module call, its parent taken from the call stack
(torchinfo's approach), so a module called twice shows twice, each time under its caller. A
``TorchFunctionMode`` sees the tensor operations that user modules do in ``forward`` (``+``,
``torch.cat``, ``view``...), so residual sums and reshapes show in the table and a failing one can
be named, and it remembers where every tensor came from (a module, the block's input, a
parameter, a constant). Compute comes from ``torch.utils.flop_counter``'s formulas: each call's
count is the counter's growth between its pre and post hook, so containers include the
matmuls and functional convolutions done in their own ``forward``.

The input's device decides how it runs (``inspect_model`` chooses): on the CPU a real forward;
on ``meta`` shapes only, with ``forward`` inside ``torch.device("meta")`` so that constants a
model makes without ``device=`` follow the input.
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from cifarctl.errors import first_line
from cifarctl.trace.records import COMPUTED, CONSTANT, INPUT, PARAMETER, Failure, LayerRecord, Shape

# Tensor operations worth a row when a user module does them in its forward.
ELEMENTWISE = {"add", "add_", "__add__", "__iadd__", "__radd__", "sub", "sub_", "__sub__", "__isub__", "__rsub__",
               "mul", "mul_", "__mul__", "__imul__", "__rmul__", "div", "div_", "__truediv__", "__itruediv__",
               "__rtruediv__"}
JOIN = {"cat", "concat", "concatenate", "stack"}
RESHAPE = {"view", "reshape", "flatten"}
MATMUL = {"matmul", "__matmul__", "mm", "bmm", "einsum", "linear", "conv1d", "conv2d", "conv3d",
          "scaled_dot_product_attention"}
WATCHED = ELEMENTWISE | JOIN | RESHAPE | MATMUL
_CANONICAL = {"add_": "add", "sub_": "sub", "mul_": "mul", "div_": "div", "__add__": "add", "__iadd__": "add",
              "__radd__": "add", "__sub__": "sub", "__isub__": "sub",
              "__rsub__": "sub", "__mul__": "mul", "__imul__": "mul", "__rmul__": "mul", "__truediv__": "div",
              "__itruediv__": "div", "__rtruediv__": "div", "concat": "cat", "concatenate": "cat",
              "__matmul__": "matmul"}

class FlopCounter(TorchDispatchMode):
    """FLOPs of every aten op, by ``FlopCounterMode``'s own formulas (its ``flop_registry``).

    The counting is FlopCounterMode's: an op with a formula is counted, one without is decomposed
    and its parts counted. Its module bookkeeping is left out (the tracer's hooks do that).
    """

    # Normalisations decompose into elementwise ops only (0 FLOPs either way), and their Python
    # decompositions import torch._decomp, a second of start-up: they are counted as they are.
    NO_MATMUL = frozenset({"native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
                           "native_layer_norm", "native_group_norm"})

    def __init__(self) -> None:
        super().__init__()
        self.registry = FlopCounterMode(display=False).flop_registry
        self.total = 0

    def _dispatch(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                  kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        packet = func._overloadpacket
        if (packet not in self.registry and func is not torch.ops.prim.device.default
                and packet.__name__ not in self.NO_MATMUL):
            with self:
                decomposed = func.decompose(*args, **kwargs)
            if decomposed is not NotImplemented:
                return decomposed
        out = func(*args, **kwargs)
        if packet in self.registry:
            self.total += self.registry[packet](*args, **kwargs, out_val=out)
        return out


# TorchDispatchMode wraps a subclass's own __torch_dispatch__ in torch._disable_dynamo, whose first
# call imports torch._dynamo: over a second, more than the whole trace. Nothing here is compiled,
# so the plain method is installed after the class is made.
FlopCounter.__torch_dispatch__ = FlopCounter._dispatch  # type: ignore[method-assign]


def op_name(func: Callable[..., Any]) -> str:
    name = getattr(func, "__name__", "") or ""
    return _CANONICAL.get(name, name)


def shapes_of(value: Any) -> list[Shape]:
    """Shapes of every tensor in ``value`` (a tensor, or nested tuples/lists/dicts of them)."""
    if isinstance(value, torch.Tensor):
        return [list(value.shape)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in shapes_of(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in shapes_of(v)]
    return []


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def module_config(module: nn.Module) -> dict[str, Any]:
    """The settings diagnosis needs (kernel, stride, padding, channels) of conv/pool/norm/linear layers."""
    conf: dict[str, Any] = {}
    for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                 "num_features", "in_features", "out_features", "output_size"):
        if hasattr(module, attr):
            value = getattr(module, attr)
            conf[attr] = list(value) if isinstance(value, tuple) else value
    return conf


def _is_user_module(module: nn.Module) -> bool:
    """Ops inside torch's own layers (BatchNorm's internals...) are not the user's to debug."""
    return not type(module).__module__.startswith("torch.")


def call_text(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """How the user wrote a reshape: ``x.view(1, -1)``, ``torch.flatten(x)``."""
    name = getattr(func, "__name__", "op")
    is_method = "Tensor" in getattr(func, "__qualname__", "") or not hasattr(torch, name)
    rest = [repr(a) if not isinstance(a, torch.Tensor) else "x" for a in args[1:]]
    rest += [f"{k}={v!r}" for k, v in kwargs.items()]
    return f"x.{name}({', '.join(rest)})" if is_method else f"torch.{name}({', '.join(['x', *rest])})"


@dataclass
class _Frame:
    """One module call in progress."""

    module: nn.Module
    index: int                      # its record
    flops: int                      # the counter when it started
    inputs: set[int] = field(default_factory=set)   # ids of its input tensors
    child_calls: dict[int, int] = field(default_factory=lambda: defaultdict(int))  # id(child) -> calls so far


class Tracer(TorchFunctionMode):
    """Collects ``LayerRecord``s for one forward pass of ``model``; use ``run()``."""

    def __init__(self, model: nn.Module, batch: int = 1) -> None:
        super().__init__()
        self.model = model
        self.batch = max(batch, 1)
        self.names: dict[nn.Module, list[str]] = defaultdict(list)
        for name, module in model.named_modules(remove_duplicate=False):
            self.names[module].append(name)
        self.tensor_names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        self.tensor_names.update({id(b): n for n, b in model.named_buffers(remove_duplicate=False)})
        self.records: list[LayerRecord] = []
        self.stack: list[_Frame] = []
        self.producers: dict[int, list[str]] = {}   # id(tensor) -> modules whose output it was
        self.origins: dict[int, str] = {}           # id(tensor) -> CONSTANT / PARAMETER... for other tensors
        self._alive: list[Any] = []                 # keeps ids in the two maps from being reused
        self.failures: dict[int, tuple[BaseException, Failure]] = {}
        self.failure: Failure | None = None         # the failure whose exception escaped forward
        self.broadcasts: list[tuple[int, list[Shape], list[str | None], Shape]] = []
        self.batch_reshapes: list[tuple[int, str]] = []   # (record, call text) of reshapes that move the batch
        self.flops: FlopCounter | None = None

    def _count(self) -> int:
        return self.flops.total if self.flops is not None else 0

    def _macs(self, flops: int) -> int:
        """FLOPs (2 per multiply-accumulate) of the whole batch -> MACs of one image."""
        return flops // 2 // self.batch

    # -- module hooks ------------------------------------------------------------------------
    def _name(self, module: nn.Module) -> str:
        """The module's path under its caller; a module reachable by several paths gets one per call."""
        names = self.names.get(module) or ["?"]
        if len(names) == 1 or not self.stack:
            return names[0]
        caller = self.stack[-1]
        parent = self.records[caller.index].module
        under = [n for n in names if (n.rpartition(".")[0] if "." in n else "") == parent] or names
        nth = caller.child_calls[id(module)]
        caller.child_calls[id(module)] += 1
        return under[nth % len(under)]

    def _pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        name = self._name(module)
        record = LayerRecord(
            module=name, type=type(module).__name__, depth=len(self.stack),
            parent=self.stack[-1].index if self.stack else None,
            input=shapes_of(args), params=sum(p.numel() for p in module.parameters()),
            leaf=not any(True for _ in module.children()), config=module_config(module),
        )
        self.records.append(record)
        self.stack.append(_Frame(module, len(self.records) - 1, self._count(), {id(t) for t in _tensors(args)}))

    def _post(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        exc = sys.exc_info()[1]
        while len(self.stack) > 1 and self.stack[-1].module is not module:
            self.stack.pop()   # a call that never finished (cannot happen with always_call hooks)
        frame = self.stack[-1]
        record = self.records[frame.index]
        record.macs = self._macs(self._count() - frame.flops)
        if exc is not None and output is None:   # this call raised; the exception passes through it
            if id(exc) not in self.failures:
                self._note(exc, Failure(first_line(exc), type(exc).__name__, [f.index for f in self.stack]))
            self.stack.pop()
            return
        self.stack.pop()
        record.output = shapes_of(output)
        for tensor in _tensors(output):
            self.producers.setdefault(id(tensor), []).append(record.module)
            self._alive.append(tensor)

    def _note(self, exc: BaseException, failure: Failure) -> None:
        self.failures[id(exc)] = (exc, failure)

    # -- where tensors come from ---------------------------------------------------------------
    def source(self, tensor: Any) -> str | None:
        """A module path, INPUT, CONSTANT, ``<parameter:name>``, ``<computed:op>``, or None (unknown)."""
        if not isinstance(tensor, torch.Tensor):
            return None
        paths = self.producers.get(id(tensor), [])
        parent = self.records[self.stack[-1].index].module if self.stack else ""
        prefix = f"{parent}." if parent else ""
        direct = [p for p in paths if p.startswith(prefix) and "." not in p[len(prefix):]]
        if direct:
            return direct[-1]
        if self.stack and id(tensor) in self.stack[-1].inputs:
            return INPUT
        if paths:
            return paths[-1]
        if id(tensor) in self.tensor_names:
            return f"{PARAMETER}{self.tensor_names[id(tensor)]}>"
        return self.origins.get(id(tensor))

    def _origin(self, name: str, tensors: list[torch.Tensor]) -> str:
        """What a torch function's result is, given where its tensor operands came from."""
        sources = [self.source(t) for t in tensors]
        if not sources:
            return CONSTANT
        params = [s for s in sources if s is not None and s.startswith(PARAMETER)]
        if params and all(s == CONSTANT or (s is not None and s.startswith(PARAMETER)) for s in sources):
            return params[0]
        if all(s == CONSTANT for s in sources):
            return CONSTANT
        return f"{COMPUTED}{name}>"

    # -- tensor operations -------------------------------------------------------------------
    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        name = op_name(func)
        watched = getattr(func, "__name__", "") in WATCHED
        owner = self.stack[-1].module if self.stack else None
        in_user_code = owner is not None and _is_user_module(owner)
        operands = args[0] if name in JOIN and args and isinstance(args[0], (list, tuple)) else args
        tensors = [a for a in operands if isinstance(a, torch.Tensor)]
        before = self._count() if watched and in_user_code else 0
        try:
            result = func(*args, **kwargs)
        except Exception as exc:
            if id(exc) not in self.failures:
                self._note(exc, Failure(
                    message=first_line(exc), exception=type(exc).__name__, stack=[f.index for f in self.stack],
                    op=name if watched else None, operands=[list(t.shape) for t in tensors],
                    producers=[self.source(t) for t in tensors],
                    devices=sorted({t.device.type for t in _tensors(args) + _tensors(kwargs)}),
                    call=call_text(func, args, kwargs) if name in RESHAPE else ""))
            raise
        if in_user_code:
            outputs = _tensors(result)
            if outputs and not any(id(t) in self.producers or id(t) in self.tensor_names for t in outputs):
                origin = self._origin(name, [t for t in _tensors(args) + _tensors(kwargs)])
                for tensor in outputs:
                    self.origins.setdefault(id(tensor), origin)
                    self._alive.append(tensor)
            if watched:
                self._record_op(name, tensors, result, self._macs(self._count() - before),
                                call_text(func, args, kwargs) if name in RESHAPE else "")
        return result

    def _record_op(self, name: str, tensors: list[torch.Tensor], result: Any, macs: int, call: str) -> None:
        frame = self.stack[-1]
        parent = self.records[frame.index]
        shapes = [list(t.shape) for t in tensors]
        outputs = shapes_of(result)
        self.records.append(LayerRecord(module=parent.module, type=name, depth=parent.depth + 1, kind="op",
                                        parent=frame.index, input=shapes, output=outputs, macs=macs))
        index = len(self.records) - 1
        if name in {"add", "sub", "mul", "div"} and len(shapes) == 2 and shapes[0] != shapes[1] and outputs:
            self.broadcasts.append((index, shapes, [self.source(t) for t in tensors], outputs[0]))
        if (name in RESHAPE and shapes and outputs and len(shapes[0]) >= 2 and shapes[0][0] == self.batch
                and outputs[0] and outputs[0][0] != self.batch):
            self.batch_reshapes.append((index, call))

    # -- driver ------------------------------------------------------------------------------
    def run(self, inputs: torch.Tensor) -> Any:
        """One forward pass under the hooks; hooks are removed and train/eval mode restored after.

        Exceptions the model catches itself are forgotten; the one that escapes ``forward`` is
        re-raised with ``self.failure`` describing it.
        """
        handles = []
        modes = {m: m.training for m in self.model.modules()}
        fastpath = torch.backends.mha.get_fastpath_enabled()
        device = torch.device("meta") if inputs.device.type == "meta" else nullcontext()
        self._alive.append(inputs)
        try:
            for module in self.model.modules():
                handles.append(module.register_forward_pre_hook(self._pre))
                handles.append(module.register_forward_hook(self._post, always_call=True))
            self.model.eval()
            self.flops = FlopCounter()
            # Attention's CPU kernels (MultiheadAttention's fast path, the fused CPU scaled-dot-product
            # kernel) have no FLOP formula: trace the plain math path, which computes the same shapes,
            # so attention counts on the CPU as it does on meta.
            torch.backends.mha.set_fastpath_enabled(False)
            with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), device, self, self.flops:
                return self.model(inputs)
        except Exception as exc:
            self.failure = self._failure_of(exc)
            raise
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
            for handle in handles:
                handle.remove()
            for module, training in modes.items():
                module.training = training

    def _failure_of(self, exc: BaseException) -> Failure:
        seen: set[int] = set()
        cause: BaseException | None = exc
        while cause is not None and id(cause) not in seen:   # raise ... from a failed op: that op
            if id(cause) in self.failures:
                return self.failures[id(cause)][1]
            seen.add(id(cause))
            cause = cause.__cause__ or cause.__context__
        return Failure(first_line(exc), type(exc).__name__, [0] if self.records else [])


def activation_bytes(records: list[LayerRecord], batch: int) -> int:
    """float32 bytes of one image's leaf-module outputs."""
    return sum(math.prod(s) for r in records if r.kind == "module" and r.leaf and r.output
               for s in r.output) * 4 // max(batch, 1)
