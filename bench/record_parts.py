"""What a training image costs under airbench94's record recipe against its Muon recipe, part by part.

Each variant is the record's recipe with one of its differences from the Muon recipe undone (SiLU back to
GELU, whole batches of 1536 run as two chunks, no per-image brightness/contrast, the stem's bias frozen as
it is after its first 0.19 epochs), built with the run's own parts (``build_run``: precision, memory
format, kept memory, optimizer) on random images, and timed for a few steps after a warm-up. The variants
take turns (A B C ... A B C ...) so that a machine's drift touches them alike; the medians are printed as
seconds per image and as a ratio to the Muon recipe's. Take it alone on the machine.

    python bench/record_parts.py --model airbench94 --steps 4 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from cifarctl.allocator import kept_memory
from cifarctl.data.cifar10 import fake_cifar10
from cifarctl.device import resolve_device, sync_device
from cifarctl.distributed import DistInfo
from cifarctl.models.hooks import call_hook, read_only
from cifarctl.run.config import TrainConfig
from cifarctl.training.build import build_run


def variants(model: str) -> dict[str, TrainConfig]:
    record = TrainConfig.for_model(model, "record", device="cpu")
    options = record.model_options

    def undo(**changes: Any) -> TrainConfig:
        opts = {**options, **changes.pop("model_options", {})}
        return TrainConfig.for_model(model, "record", device="cpu", model_options=opts, **changes)

    return {
        "muon": TrainConfig.for_model(model, "muon", device="cpu"),
        "record": record,
        "record, gelu": undo(model_options={"activation": "gelu"}),
        "record, chunks of 768": undo(micro_batch=768),
        "record, no jitter": undo(color_jitter=(0.0, 0.0)),
        "record, gelu + chunks": undo(model_options={"activation": "gelu"}, micro_batch=768),
    }


def seconds_per_image(cfg: TrainConfig, steps: int, later: bool) -> float:
    """Median seconds per training image over ``steps`` steps, after one warm-up step (and, ``later``, after the
    model's epoch-1 hook and the freeze of what the schedule stopped: the steps after the early ones)."""
    device = resolve_device("cpu")
    with torch.random.fork_rng(devices=[]):
        parts = build_run(cfg, fake_cifar10(train=cfg.batch_size, test=10, seed=0), device, DistInfo(), fresh=False)
        model = parts.built.model
        epoch = 1 if later else 0
        call_hook(model, "on_epoch_start", epoch, read_only(cfg.to_dict()))
        if later:
            for group in parts.optimizer.param_groups:
                if group.get("train_epochs") is not None:
                    for p in group["params"]:
                        p.requires_grad_(False)
        with kept_memory(parts.keep_memory):
            timings = []
            for index in range(steps + 1):
                x, y = next(iter(parts.loaders.train.epoch(index)))
                started = time.perf_counter()
                parts.step(x, y)
                sync_device(device)
                timings.append((time.perf_counter() - started) / len(y))
    return statistics.median(timings[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="airbench94")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--later", action="store_true", help="steps after the early epochs (stem bias frozen)")
    args = parser.parse_args()
    cases = variants(args.model)
    found: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, cfg in cases.items():
            found[name].append(seconds_per_image(cfg, args.steps, args.later))
    base = statistics.median(found["muon"])
    print(f"{args.model}, {torch.get_num_threads()} threads, bf16 autocast: "
          f"{TrainConfig.for_model(args.model, 'muon', device='cpu').amp}; medians of {args.rounds} rounds")
    for name, values in found.items():
        median = statistics.median(values)
        print(f"  {name:28} {median * 1e3:7.3f} ms/image  {median / base:5.3f}x muon's  "
              f"({min(values) * 1e3:.3f}-{max(values) * 1e3:.3f})")


if __name__ == "__main__":
    main()
