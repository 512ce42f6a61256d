"""Device selection: CPU is first class; CUDA, or an Apple GPU (MPS), when asked for or available.

The MPS path is tested on CPU-only machines with the device simulated (availability patched both
ways); it has not been measured on Apple hardware.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from cifarctl.errors import DeviceError

DEVICES = "auto, cpu, cuda, cuda:N or mps"


def mps_available() -> bool:
    """Whether an Apple GPU is usable through this torch (built with MPS, running on macOS with the GPU)."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def mps_built() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_built())


def auto_device() -> torch.device:
    """CUDA, then an Apple GPU, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` (CUDA, then MPS, then CPU); ``cpu``; ``cuda``; ``cuda:N``; ``mps``."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return auto_device()
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise DeviceError(f"unknown device {spec!r}: use {DEVICES}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise DeviceError(f"--device {spec} asked for CUDA, but {why}; use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif device.type == "mps":
        if not mps_built():
            raise DeviceError(f"--device {spec}: this torch has no MPS support (Apple GPUs, on macOS); "
                              "use --device cpu (or auto)")
        if not mps_available():
            raise DeviceError(f"--device {spec}: no Apple GPU is visible (MPS needs macOS 12.3+ on Apple "
                              "silicon or an AMD GPU); use --device cpu (or auto)")
        if device.index not in (None, 0):
            raise DeviceError(f"--device {spec}: there is one Apple GPU, mps (or mps:0)")
    elif device.type != "cpu":
        raise DeviceError(f"device {spec!r} is not supported: use {DEVICES}")
    return device


def describe_device(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H100)``, ``mps (Apple GPU)``, ``cpu``: for the line that says which device `auto` took."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if device.type == "mps":
        return "mps (Apple GPU)"
    return "cpu"


def mps_supports_bf16() -> bool:
    """Whether the Apple GPU computes bf16 (macOS 14 and newer); older systems refuse bf16 tensors."""
    try:
        return bool((torch.ones(2, dtype=torch.bfloat16, device="mps") * 2).sum().item() == 4)
    except (RuntimeError, TypeError):
        return False


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The mixed-precision dtype for ``device``, or None for plain fp32.

    CUDA: bf16 where supported, else fp16 (with a GradScaler). MPS: the same rule, where torch has
    autocast for MPS (bf16 needs macOS 14; fp16 otherwise, with a GradScaler: fp16 gradients underflow).
    CPU: bf16 only where the CPU computes it natively (measured on a 2-core AVX512-BF16 EPYC: VGG-16
    evaluation 2.2x, training 1.6x faster); elsewhere fp32, since emulated bf16 is slower than fp32
    (on a 2-core AVX2 EPYC, airbench94 trains at 9 img/s in emulated bf16 against 76 in fp32).
    """
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        if not torch.amp.is_autocast_available("mps"):
            return None
        return torch.bfloat16 if mps_supports_bf16() else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def needs_grad_scaler(cast: torch.dtype | None) -> bool:
    """fp16 training needs loss scaling (its gradients underflow); bf16 and fp32 do not."""
    return cast == torch.float16


def sync_device(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA and MPS run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def default_channels_last(device: torch.device, cast: torch.dtype | None, inference: bool = False) -> bool:
    """Whether channels_last is faster here, for training or (``inference``) evaluation alone.

    CUDA and CPU bf16: faster. CPU fp32 on a CPU without native bf16 (2-core AVX2 EPYC, Zen 3):
    training 1.44x faster for airbench94, 1.16-1.25x for VGG-16, ResNet-50 and ResNet-18, evaluation 2x.
    CPU fp32 on a CPU with native bf16 (the AVX-512 Zen 4, i.e. with --no-amp): training a little slower,
    so off; inference faster on every CPU (VGG-16: 290 against 336 ms per 100 images). Apple GPUs:
    unmeasured, so the layout torch uses by default there.
    """
    if device.type == "mps":
        return False
    if device.type != "cpu" or cast is not None or inference:
        return True
    return not cpu_has_native_bf16()


def takes_channels_last(model: nn.Module) -> bool:
    """Whether ``model``'s forward runs on channels_last images (one that ``.view()``s its maps does not), tried
    on two images where its parameters are. The model is left in the default layout, each module in the
    train/eval mode it was in, and the random state as it was."""
    modes = {m: m.training for m in model.modules()}
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        model.eval()
        with torch.inference_mode(), torch.random.fork_rng(devices=[]):
            model.to(memory_format=torch.channels_last)(
                torch.zeros(2, 3, 32, 32, device=device).to(memory_format=torch.channels_last))
        return True
    except RuntimeError:
        return False
    finally:
        model.to(memory_format=torch.contiguous_format)
        for module, training in modes.items():
            module.training = training


def uses_channels_last(model: nn.Module, device: torch.device, cast: torch.dtype | None, registered: bool,
                       asked: bool | None = None, inference: bool = False) -> bool:
    """The memory format a run (or, ``inference``, an evaluation) gives ``model``: ``asked``
    (``--channels-last/--no-channels-last``), else channels_last where it is faster here
    (``default_channels_last``) for a model that takes it: a registered model does; a model of your own
    is tried first (one that ``.view()``s its maps refuses channels_last tensors).
    The training run, the budget's probe and evaluation all decide it here.
    """
    if asked is not None:
        return asked
    if not default_channels_last(device, cast, inference):
        return False
    return registered or takes_channels_last(model)


class Stopwatch:
    """Seconds since a start, synchronising the device first so queued GPU work is counted."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.sync()
        self.started = time.perf_counter()

    def sync(self) -> None:
        sync_device(self.device)

    def seconds(self) -> float:
        self.sync()
        return time.perf_counter() - self.started
