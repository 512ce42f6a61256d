"""Turn trace records and a failure into plain words: where the shapes stop fitting, why, and the fix."""

from __future__ import annotations

import math
import re
from typing import Any

from cifarctl.trace.records import (COMPUTED, CONSTANT, INPUT, PARAMETER, Diagnosis, Failure, LayerRecord, Shape,
                                    Warning_, fmt_shape)

_CONV = ("Conv1d", "Conv2d", "Conv3d")
_POOL = ("MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d")
_NORM = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "InstanceNorm2d", "SyncBatchNorm")


def _pair(value: Any, n: int = 2) -> list[int]:
    return list(value) if isinstance(value, (list, tuple)) else [int(value)] * n


def _padding(config: dict[str, Any], n: int = 2) -> list[int]:
    """A layer's padding per spatial dimension; ``"valid"`` is 0 and ``"same"`` what keeps the size."""
    padding = config.get("padding", 0)
    if padding == "valid":
        return [0] * n
    if padding == "same":
        kernel = _pair(config.get("kernel_size", 1), n)
        dilation = _pair(config.get("dilation", 1), n)
        return [d * (k - 1) // 2 for k, d in zip(kernel, dilation)]
    return _pair(padding, n)


def _descendants(records: list[LayerRecord], path: str) -> list[LayerRecord]:
    prefix = f"{path}."
    return [r for r in records if r.kind == "module" and r.module.startswith(prefix)]


def _where(rec: LayerRecord) -> str:
    """How a message names a module: its dotted path, or the model itself for the root."""
    return f"{rec.type} `{rec.module}`" if rec.module else f"the forward of {rec.type} (the model itself)"


def _label(source: str | None) -> str:
    """Plain words for where an operand came from (``Tracer.source``)."""
    if source is None:
        return "unknown"
    if source == INPUT:
        return "the block's input (identity shortcut)"
    if source == CONSTANT:
        return "a constant made in forward"
    if source.startswith(PARAMETER):
        return f"parameter `{source[len(PARAMETER):-1]}`"
    if source.startswith(COMPUTED):
        return f"{source[len(COMPUTED):-1]}() in forward"
    return f"`{source}`" if source else "the model's own output"


def _is_map(source: str | None) -> bool:
    """A module's output or the block's input: the tensors a residual sum joins."""
    return source is not None and (source == INPUT or not source.startswith("<"))


# -- branch analysis for residual sums and concatenations --------------------------------------

def _branch(records: list[LayerRecord], path: str | None) -> dict[str, Any]:
    """Total stride of a branch, its strided layers, and the kernels that shrink the map for lack of padding."""
    stride, strided, shrinkers, first_conv = 1, [], [], None
    modules = _descendants(records, path) if _is_map(path) and path != INPUT else []
    for r in modules:
        if r.type not in _CONV + _POOL or not r.config:
            continue
        k = _pair(r.config.get("kernel_size", 1))[-1]
        s = _pair(r.config.get("stride") or k)[-1]
        p = _padding(r.config)[-1]
        d = _pair(r.config.get("dilation", 1))[-1]
        stride *= s
        if s > 1:
            strided.append(r.module)
        if r.type in _CONV and first_conv is None:
            first_conv = r.module
        if isinstance(p, int) and d * (k - 1) > 2 * p:
            shrinkers.append((r.module, r.type, k, p, d * (k - 1) - 2 * p, d))
    return {"stride": stride, "strided": strided, "shrinkers": shrinkers, "first_conv": first_conv}


def _stride_fix(info: list[dict[str, Any]], producers: list[str | None]) -> str:
    lo = 0 if info[0]["stride"] < info[1]["stride"] else 1
    hi = 1 - lo
    fact = (f"{_label(producers[hi])} downsamples by {info[hi]['stride']} "
            f"(stride in {', '.join(f'`{m}`' for m in info[hi]['strided'])}) but {_label(producers[lo])} by "
            f"{info[lo]['stride']}")
    if info[lo]["stride"] == 1 and len(info[hi]["strided"]) > 1:
        return (f"{fact}: a block keeps the size unless it is meant to downsample, so use stride=1 in those "
                "layers (or, to downsample, stride 2 in one conv of each branch)")
    target = info[lo]["first_conv"]
    ratio = info[hi]["stride"] // max(info[lo]["stride"], 1)
    where = f"put stride={ratio} in `{target}`" if target else "downsample that branch too"
    return f"{fact}: {where} so both branches shrink the map alike"


def _branch_fix(records: list[LayerRecord], shapes: list[Shape], producers: list[str | None]) -> str:
    """A suggested fix that makes two branches produce the same shape."""
    fixes = []
    a, b = shapes[0], shapes[1]
    if len(a) != len(b):
        return (f"the operands have {len(a)} and {len(b)} dimensions: reshape one so both are "
                f"{fmt_shape(a if len(a) > len(b) else b, batch=False)}-like maps")
    if len(a) > 1 and a[1] != b[1]:
        fixes.append(f"channels differ ({a[1]} vs {b[1]}): make the last conv of each branch output the same "
                     "number of channels")
    if a[2:] != b[2:]:
        info = [_branch(records, p) for p in producers]
        for (module, kind, k, p, shrink, d) in (s for i in info for s in i["shrinkers"]):
            need = d * (k - 1) // 2
            fixes.append(f"give `{module}` padding={need} (its {k}x{k} {kind[:-2].lower()} kernel with padding {p} "
                         f"shrinks the map by {shrink})")
        if info[0]["stride"] != info[1]["stride"]:
            fixes.append(_stride_fix(info, producers))
    if not fixes:
        fixes.append("make both branches end in the same shape (same channels, same total stride, "
                     "padding = kernel // 2 on every conv that should keep the size)")
    return "; ".join(fixes)


def _torch_message(a: Shape, b: Shape) -> str:
    """The error PyTorch raises on real tensors (meta tensors word it differently)."""
    for i in range(1, min(len(a), len(b)) + 1):
        if a[-i] != b[-i] and a[-i] != 1 and b[-i] != 1:
            return (f"The size of tensor a ({a[-i]}) must match the size of tensor b ({b[-i]}) at non-singleton "
                    f"dimension {max(len(a), len(b)) - i}")
    return ""


def _operand_list(shapes: list[Shape], producers: list[str | None]) -> list[dict[str, Any]]:
    return [{"shape": s, "from": p} for s, p in zip(shapes, producers)]


def _describe_operands(shapes: list[Shape], producers: list[str | None]) -> str:
    return " and ".join(f"{fmt_shape(s, batch=False)} (from {_label(p)})" for s, p in zip(shapes, producers))


# -- one function per failure kind ------------------------------------------------------------

def _elementwise(rec: LayerRecord, f: Failure, records: list[LayerRecord]) -> tuple[str, str, str]:
    verb = _VERBS.get(f.op or "", "combines")
    torch_message = _torch_message(f.operands[0], f.operands[1]) or f.message
    message = (f"{_where(rec)} {verb} maps that do not fit: {_describe_operands(f.operands, f.producers)} "
               f"(\"{torch_message}\")")
    return "residual-mismatch", message, _branch_fix(records, f.operands, f.producers)


def _join(rec: LayerRecord, f: Failure, records: list[LayerRecord]) -> tuple[str, str, str]:
    message = (f"torch.{f.op} in {_where(rec)} joins maps of different sizes: "
               f"{_describe_operands(f.operands, f.producers)}; all dimensions but the joined one must match")
    fix = _branch_fix(records, f.operands[:2], f.producers[:2]) if len(f.operands) >= 2 else ""
    return "cat-mismatch", message, fix or "resize one input (F.interpolate or a strided conv) before joining"


def _reshape(rec: LayerRecord, f: Failure, records: list[LayerRecord]) -> tuple[str, str, str]:
    shape = f.operands[0] if f.operands else []
    numel = math.prod(shape) if shape else 0
    per_sample = numel // shape[0] if shape and shape[0] else numel
    target = re.search(r"shape '(\[[^\]]*\])'", f.message)
    wanted = f" into {target.group(1)}" if target else ""
    message = (f"{_where(rec)} reshapes a {fmt_shape(shape)} tensor ({numel:,} values){wanted} with {f.op}, "
               "and the sizes don't fit")
    hint = (f"flatten with x.flatten(1) or x.view(x.size(0), -1) so the batch size is kept; each sample has "
            f"{per_sample:,} values, so the next Linear needs in_features={per_sample}")
    return "reshape-mismatch", message, hint


def _previous_leaf(records: list[LayerRecord], index: int) -> LayerRecord | None:
    for r in reversed(records[:index]):
        if r.kind == "module" and r.leaf and r.output:
            return r
    return None


def _channels(rec: LayerRecord, index: int, records: list[LayerRecord]) -> tuple[str, str, str] | None:
    got = rec.input[0][1] if rec.input and len(rec.input[0]) > 1 else None
    expected = rec.config.get("in_channels", rec.config.get("num_features"))
    if got is None or expected is None or got == expected:
        return None
    prev = _previous_leaf(records, index)
    source = f" from `{prev.module}` ({prev.type})" if prev else ""
    name = "in_channels" if "in_channels" in rec.config else "num_features"
    message = f"{rec.type} `{rec.module}` expects {expected} channels ({name}={expected}) but gets {got}{source}"
    hint = f"set {name}={got} in `{rec.module}`"
    if prev is not None and prev.type in _CONV:
        hint += f", or make `{prev.module}` output {expected} channels (out_channels={expected})"
    return "channel-mismatch", message, hint


def _kernel(rec: LayerRecord) -> tuple[str, str, str] | None:
    if not rec.input or len(rec.input[0]) < 3 or not rec.config.get("kernel_size"):
        return None
    spatial = rec.input[0][2:]
    kernel = _pair(rec.config["kernel_size"], len(spatial))
    padding = _padding(rec.config, len(spatial))
    dilation = _pair(rec.config.get("dilation", 1), len(spatial))
    if all(s + 2 * p >= d * (k - 1) + 1 for s, k, p, d in zip(spatial, kernel, padding, dilation)):
        return None
    size = "x".join(map(str, spatial))
    message = (f"{rec.type} `{rec.module}` has a {'x'.join(map(str, kernel))} kernel but the map is only {size} "
               f"here (padding {max(padding)})")
    hint = ("the layers before it shrink the map too much for this input: use a larger input, remove a "
            "stride or pooling earlier, or replace it with nn.AdaptiveAvgPool2d(1)/nn.AdaptiveMaxPool2d(1)"
            if rec.type in _POOL else
            "the layers before it shrink the map too much for this input: use a larger input, less "
            f"downsampling earlier, or padding={max(kernel) // 2} to keep the size")
    return "kernel-too-large", message, hint


def _linear(rec: LayerRecord, index: int, records: list[LayerRecord]) -> tuple[str, str, str] | None:
    got = rec.input[0][-1] if rec.input and rec.input[0] else None
    expected = rec.config.get("in_features")
    if got is None or expected is None or got == expected:
        return None
    last_map = next((r for r in reversed(records[:index]) if r.output and len(r.output[0]) == 4), None)
    where = ""
    if last_map is not None:
        where = f"; it is the {fmt_shape(last_map.output[0], batch=False)} map of `{last_map.module}` flattened"
    message = f"Linear `{rec.module}` expects {expected} input features (in_features={expected}) but gets {got}{where}"
    hint = f"set in_features={got}"
    if last_map is not None and last_map.output[0][1] == expected:
        hint += (f", or pool the map to 1x1 before flattening (nn.AdaptiveAvgPool2d(1)) so it has {expected} "
                 "features")
    return "linear-mismatch", message, hint


def _batch_baked(rec: LayerRecord, index: int, records: list[LayerRecord],
                 reshapes: list[tuple[int, str]], batch: int) -> tuple[str, str, str] | None:
    """A failure downstream of a reshape that moved the batch dimension: the reshape is the bug."""
    before = [(i, call) for i, call in reshapes if i < index]
    if not before or not rec.input or not rec.input[0] or rec.input[0][0] == batch:
        return None   # the layer that failed still sees one row per image: the reshape is not to blame
    i, call = before[-1]
    op = records[i]
    owner = records[op.parent] if op.parent is not None else rec
    got, made = op.input[0], op.output[0] if op.output else []
    keeps = f"keeps batch {made[0]} only" if made and made[0] < batch else f"makes {made[0] if made else '?'} rows"
    message = (f"`{call or op.type}` in {_where(owner)} {keeps}: it turns the {fmt_shape(got)} batch into "
               f"{fmt_shape(made)}, so {_where(rec)} gets {fmt_shape(rec.input[0])}; "
               f"each of the {batch} images should keep its own row")
    per_sample = math.prod(got[1:])
    hint = (f"use `x.flatten(1)` (or `x.view(x.size(0), -1)`) instead of `{call or op.type}`; each image has "
            f"{per_sample:,} values")
    return "batch-baked", message, hint


def diagnose(records: list[LayerRecord], failure: Failure, reshapes: list[tuple[int, str]] | None = None,
             batch: int = 1) -> Diagnosis:
    """Explain ``failure``: the innermost module whose forward raised, the cause and a fix.

    ``reshapes`` are the reshapes that moved the batch dimension (``Tracer.batch_reshapes``): a
    later failure in a layer is then put down to them.
    """
    index = failure.stack[-1] if failure.stack else len(records) - 1
    rec = records[index]
    found: tuple[str, str, str] | None = None
    if failure.op in {"add", "sub", "mul", "div"} and len(failure.operands) == 2:
        found = _elementwise(rec, failure, records)
    elif failure.op in {"cat", "stack"}:
        found = _join(rec, failure, records)
    elif failure.op in {"view", "reshape", "flatten"}:
        found = _reshape(rec, failure, records)
    elif rec.type in _CONV + _NORM + ("Linear",) and reshapes:
        found = _batch_baked(rec, index, records, reshapes, batch)
    if found is None:
        if rec.type in _CONV + _NORM:
            found = _channels(rec, index, records) or _kernel(rec)
        elif rec.type in _POOL:
            found = _kernel(rec)
        elif rec.type == "Linear":
            found = _linear(rec, index, records)
    cause, message, hint = found or (
        "other", f"{_where(rec)} failed: {failure.message}",
        "check the input shape this module receives (shown above) against what its forward expects")
    children = [{"module": r.module, "type": r.type, "output": r.output}
                for r in records[index + 1:] if r.output is not None and r.parent == index and r.kind == "module"]
    return Diagnosis(module=rec.module, type=rec.type, message=message, hint=hint, input=rec.input,
                     children=children, operands=_operand_list(failure.operands, failure.producers),
                     cause=cause, exception=f"{failure.exception}: {failure.message}")


def _suspicious_broadcast(op: str, a: Shape, b: Shape, sources: list[str | None]) -> bool:
    """Whether an elementwise broadcast is likely a silent bug rather than an intended affine or gate.

    Both operands must be maps (module outputs or the block's input) of one rank. Adding or
    subtracting them while the batch or a spatial dimension expands is the residual-sum bug;
    multiplying or dividing is too when the batch expands or the smaller map keeps part of its
    spatial size (a per-channel gate, N x C x 1 x 1 as in squeeze-and-excitation, is intended).
    """
    if len(a) != len(b) or len(a) < 2 or not all(_is_map(s) for s in sources):
        return False
    expanded = [i for i in range(len(a)) if a[i] != b[i] and 1 in (a[i], b[i])]
    batch_expanded, spatial_expanded = 0 in expanded, any(i >= 2 for i in expanded)
    if op in {"add", "sub"}:
        return batch_expanded or spatial_expanded
    small = a if math.prod(a) < math.prod(b) else b
    gate = all(d == 1 for d in small[2:])
    return batch_expanded or (spatial_expanded and not gate)


SMALL_IMAGE = 64


def _stem_warning(records: list[LayerRecord], input_shape: Shape | None) -> list[Warning_]:
    """An ImageNet-style stem on small images: a quarter of the input's side left before the first residual block.

    Small means up to 64x64 (CIFAR, Tiny ImageNet); at 224x224 that stem is the design.
    """
    if not input_shape or len(input_shape) != 4 or not 8 <= min(input_shape[2:]) <= SMALL_IMAGE:
        return []
    sums = [r for r in records if r.kind == "op" and r.type == "add" and r.parent is not None
            and len(r.input) == 2 and r.input[0] == r.input[1] and len(r.input[0]) == 4]
    if not sums:
        return []
    block = records[sums[0].parent]
    if not block.input or len(block.input[0]) != 4 or block.parent is None:
        return []
    side, got = input_shape[2:], block.input[0][2:]
    if not all(g * 4 <= s for g, s in zip(got, side)):
        return []
    first = records.index(block)
    shrinkers = [r for r in records[:first] if r.kind == "module" and r.leaf and r.type in _CONV + _POOL
                 and r.input and r.output and len(r.input[0]) == 4 and r.output[0][2:] != r.input[0][2:]]
    how = ", ".join(f"`{r.module}` {r.type} {fmt_shape(r.input[0][2:])}->{fmt_shape(r.output[0][2:])}"
                    for r in shrinkers)
    return [Warning_(block.module, (
        f"the stem shrinks the {fmt_shape(side)} input to {fmt_shape(got)} before the first residual block "
        f"`{block.module}` ({block.type})" + (f": {how}" if how else "") + "; on small images such as CIFAR's "
        "32x32 this costs accuracy. A CIFAR stem is a 3x3 conv with stride 1 and padding 1, and no max-pool "
        "(for torchvision's ResNet: conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False), "
        "maxpool = nn.Identity())"))]


def find_warnings(records: list[LayerRecord], broadcasts: list[tuple[int, list[Shape], list[str | None], Shape]],
                  reshapes: list[tuple[int, str]] | None = None, batch: int = 1,
                  output: list[Shape] | None = None, input_shape: Shape | None = None) -> list[Warning_]:
    """Silent problems: an early-shrinking stem, residual sums that broadcast, batches reshaped away,
    maps that collapse to 1x1 early."""
    warnings = _stem_warning(records, input_shape)
    for index, shapes, producers, result in broadcasts:
        op = records[index].type
        if not _suspicious_broadcast(op, shapes[0], shapes[1], producers):
            continue
        parent = records[index].module
        owner = records[records[index].parent] if records[index].parent is not None else records[0]
        who = f"`{parent}`" if parent else _where(owner)
        what = "a residual sum's branches should match" if op in {"add", "sub"} else "both maps should match"
        warnings.append(Warning_(parent, (
            f"{who} {_VERBS.get(op, op + 's')} {_describe_operands(shapes, producers)}: the shapes differ and "
            f"broadcast silently to {fmt_shape(result, batch=False)}; {what} "
            f"({_branch_fix(records, shapes, producers)})")))
    if reshapes and output and output[0] and output[0][0] != batch:
        index, call = reshapes[0]
        owner = records[records[index].parent] if records[index].parent is not None else records[0]
        warnings.append(Warning_(owner.module, (
            f"`{call}` in {_where(owner)} turns a batch of {batch} into {fmt_shape(records[index].output[0])}, and "
            f"the model returns {fmt_shape(output[0])} for {batch} images: it only works at one batch size; use "
            "`x.flatten(1)` (or `x.view(x.size(0), -1)`)")))
    warnings += _collapse_warning(records)
    return warnings


_VERBS = {"add": "adds", "sub": "subtracts", "mul": "multiplies", "div": "divides"}


def _global_pool(rec: LayerRecord) -> bool:
    """Pooling meant to reach 1x1 (a classifier head, a squeeze-and-excitation gate): not a collapse."""
    if rec.type.startswith("Adaptive"):
        return True
    kernel = rec.config.get("kernel_size")
    return rec.type in _POOL and kernel is not None and _pair(kernel) == rec.input[0][2:]


def _collapse_warning(records: list[LayerRecord]) -> list[Warning_]:
    leaves = [r for r in records if r.kind == "module" and r.leaf and r.output and r.input]
    for i, r in enumerate(leaves):
        out, inp = r.output[0], r.input[0]
        if (len(out) == 4 and out[2:] == [1, 1] and len(inp) == 4 and inp[2] * inp[3] > 1
                and not _global_pool(r)):
            later = [x for x in leaves[i + 1:] if x.type in _CONV + _POOL
                     and max(_pair(x.config.get("kernel_size", 1))) > 1]
            if later:
                return [Warning_(r.module, (
                    f"`{r.module}` shrinks the map from {inp[2]}x{inp[3]} to 1x1, yet {len(later)} later "
                    f"layer(s) with larger kernels follow (first `{later[0].module}`): they see one pixel; "
                    "the network downsamples too early for this input"))]
    return []
