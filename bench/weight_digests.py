"""Fingerprints of training: the sha256 of the final weights of short fixed-seed runs on generated data.

A refactor of the training code must not change a single weight. Run this before the change and after
it, and compare the two outputs line by line (``diff``): every line must be the same.

    python bench/weight_digests.py > before.txt
    ... change the code ...
    python bench/weight_digests.py > after.txt && diff before.txt after.txt

The runs (CPU, fp32, one thread, so the digests are the same from run to run on one machine):
airbench94 with its paper and Muon recipes (two epochs, the whitening bias frozen after the first),
resnet18's onecycle recipe, vgg16 with the course's recipe, a ``--time-budget`` run whose step time
is fixed at 10 s and which keeps its first plan (so its length is arithmetic: a refit would follow the
real clock, which no two runs share), and a run stopped after 5 steps and resumed, beside the same run
uninterrupted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

import torch

from cifarctl.data import CIFAR10, fake_cifar10
from cifarctl.engine import TrainConfig, TrainingInterrupted, resume, train
from cifarctl.progress import NullProgress

SMALL = dict(device="cpu", amp=False, eval_batch_size=50, log_every=1, seed=3)


def small_data() -> CIFAR10:
    """300 training and 100 test images of noise: enough for a few steps of every model."""
    data = fake_cifar10(train=300, test=100, seed=7)
    return data


def weights_digest(run_dir: Path) -> str:
    state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)["model"]
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class StopAfter(NullProgress):
    """Asks the loop to stop once the bar has advanced ``steps`` training steps."""

    def __init__(self, stop: threading.Event, steps: int) -> None:
        self.stop, self.steps, self.seen, self.task = stop, steps, 0, ""

    def start(self, description: str, total: float | None, unit: str = "") -> None:
        self.task = unit

    def advance(self, amount: float = 0, **info: object) -> None:
        if self.task == "steps":
            self.seen += amount
            if self.seen >= self.steps:
                self.stop.set()


class FixedStopwatch:
    """Every measured interval takes 10 s, so a budget's plan is arithmetic."""

    def __init__(self, device: object) -> None:
        pass

    def seconds(self) -> float:
        return 10.0


def budget_modules() -> list[Any]:
    """The modules that name ``Stopwatch`` for the budget (where it lives depends on the code's version)."""
    found = []
    for name in ("cifarctl.training.budget", "cifarctl.training.tta_choice", "cifarctl.training.trainer"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "Stopwatch"):
            found.append(module)
    return found


def run(name: str, cfg: TrainConfig, data: CIFAR10, root: Path, **kwargs: Any) -> str:
    result = train(cfg, data, root / name, **kwargs)
    extra = f" steps={result.global_step}"
    if result.budget:
        extra += f" plan_steps={result.budget['steps']} tta={result.budget['tta']}"
    return f"{name}{extra} acc={result.test_accuracy} weights={weights_digest(root / name)}"


def whitening_bias_epochs(epochs: int) -> dict[str, Any]:
    """The epochs airbench94's whitened stem's bias trains, as this version of the code takes them (a model
    option now, a training setting before), so one script fingerprints both sides of a change."""
    if "whiten_bias_epochs" in {f.name for f in dataclasses.fields(TrainConfig)}:
        return {"whiten_bias_epochs": epochs}
    return {"model_options": {"whiten_bias_epochs": epochs}}


def main() -> None:
    torch.set_num_threads(1)
    data = small_data()
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        short = dict(batch_size=100, **whitening_bias_epochs(1))
        cases: list[tuple[str, Callable[[], TrainConfig]]] = [
            ("airbench94-paper", lambda: TrainConfig.for_model("airbench94", epochs=2, **short, **SMALL)),
            ("airbench94-muon", lambda: TrainConfig.for_model("airbench94", recipe="muon", epochs=2, **short,
                                                             **SMALL)),
            ("resnet18-onecycle", lambda: TrainConfig.for_model("resnet18", epochs=1, max_steps=3, batch_size=32,
                                                               **SMALL)),
            ("vgg16-course", lambda: TrainConfig.for_model("vgg16", epochs=1, max_steps=3, batch_size=32, **SMALL)),
        ]
        for name, make in cases:
            lines.append(run(name, make(), data, root))

        originals = [(module, module.Stopwatch) for module in budget_modules()]
        extend = [(module, module.EXTEND_SHARE) for module in budget_modules() if hasattr(module, "EXTEND_SHARE")]
        try:
            for module, _ in originals:
                module.Stopwatch = FixedStopwatch
            for module, _ in extend:  # never ahead of a plan made at 10 s a step (nor behind: real steps are fast)
                module.EXTEND_SHARE = float("inf")
            cfg = TrainConfig(model="resnet50", batch_size=50, optimizer="sgd", lr=0.05, lr_schedule="triangle",
                              eval_every=0, time_budget=100.0, **SMALL)
            lines.append(run("resnet50-budget", cfg, data, root))
        finally:
            for module, original in originals:
                module.Stopwatch = original
            for module, share in extend:
                module.EXTEND_SHARE = share

        resumed = lambda: TrainConfig.for_model("airbench94", epochs=2, **short, **SMALL)  # noqa: E731
        lines.append(run("airbench94-uninterrupted", resumed(), data, root))
        stop = threading.Event()
        try:
            train(resumed(), data, root / "killed", progress=StopAfter(stop, 5), stop=stop)
        except TrainingInterrupted as exc:
            lines.append(f"killed at step {exc.global_step}")
        result = resume(root / "killed", data)
        lines.append(f"airbench94-resumed steps={result.global_step} acc={result.test_accuracy} "
                     f"weights={weights_digest(root / 'killed')}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
