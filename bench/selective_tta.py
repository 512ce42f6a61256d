"""Selective test-time augmentation against full TTA 2: accuracy and cost, checkpoint by checkpoint.

For each checkpoint, the six views of TTA 2 (the images, the one-pixel shifts up-left and down-right,
each with its mirror image) are computed once; from them every level's accuracy follows exactly as
``evaluate_model`` computes it (TTA 0, 1, 2, and selective at each fraction: level 2 for the least
confident images by ``confidence``, the gap between the plain pass's two likeliest classes, the plain
logits for the rest; beside it, "by top p", the same with the lowest top softmax probability, the
current record's choice). Each is given for both weightings of the six views: airbench's (TTA 2's
0.25, 0.25 and 0.125 four times, what ``tta_logits`` computes) and the record's equal mean ("equal").
Then each level's cost is timed with ``evaluate_model`` itself (alone on the machine: a timing;
``--no-time`` skips it). Prints one row per checkpoint and level, and the means with their spread.

``--split val`` scores each checkpoint on the training images its run held out (``--val-split``, re-derived
from its config's size and seed), never on the test set: a rule or a weighting is chosen there, and
``--split test`` then reports the chosen one.

    python bench/selective_tta.py airbench94_quarter runs/g/seed-*/last.pt --split val --no-time
    python bench/selective_tta.py airbench94 /tmp/m/g_f5m/seed-*/last.pt
    python bench/selective_tta.py resnet18 runs/*/last.pt --every 5          # every fifth test image
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cifarctl.data import load_cifar10
from cifarctl.data.loader import DeviceLoader
from cifarctl.evaluation import confidence, evaluate_model, load_model, tta_logits
from cifarctl.training.build import validation_split

FRACTIONS = (0.1, 0.25, 0.3, 0.35, 0.5, 1.0)


def views(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The six logits of TTA 2, in the order tta_logits combines them."""
    height, width = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    out = []
    for image in (x, padded[..., :height, :width], padded[..., 2:, 2:]):
        out += [model(image).float(), model(image.flip(-1)).float()]
    return out


def accuracies(model: torch.nn.Module, loader: DeviceLoader) -> dict[str, float]:
    """Each level's accuracy (%) on ``loader``'s images, from one pass of TTA 2's six views."""
    plain, level1, level2, equal, labels = [], [], [], [], []
    with torch.inference_mode():
        for x, y in loader.epoch(0):
            v = views(model, x)
            mirrored = [0.5 * v[0] + 0.5 * v[1], 0.5 * v[2] + 0.5 * v[3], 0.5 * v[4] + 0.5 * v[5]]
            plain.append(v[0])
            level1.append(mirrored[0])
            level2.append(0.5 * mirrored[0] + 0.25 * (mirrored[1] + mirrored[2]))
            equal.append(torch.stack(v).mean(0))
            labels.append(y)
    p, l1, l2, l2_equal, y = (torch.cat(t) for t in (plain, level1, level2, equal, labels))
    assert torch.allclose(l2[:8], tta_logits(model, next(iter(loader.epoch(0)))[0][:8], 2), atol=1e-4)
    out = {"0": _acc(p, y), "1": _acc(l1, y), "2": _acc(l2, y), "2 equal": _acc(l2_equal, y)}
    for rule, sureness in (("", confidence(p)), (" by top p", p.softmax(1).max(1).values)):
        for weighting, full in (("", l2), (" equal", l2_equal)):
            for fraction in FRACTIONS:
                unsure = torch.topk(sureness, round(fraction * len(p)), largest=False).indices
                mixed = p.clone()
                mixed[unsure] = full[unsure]
                out[f"selective {fraction:g}{rule}{weighting}"] = _acc(mixed, y)
    return out


def images_of(split: str, data, config: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The images a checkpoint is scored on: the test set, or the training images its run held out."""
    if split == "test":
        return data.test_images, data.test_labels
    if not config.get("val_split"):
        raise SystemExit("--split val needs checkpoints trained with --val-split N (this one saw every training image)")
    _, held = validation_split(data.train_labels, int(config["val_split"]), int(config["seed"]))
    return data.train_images[held], data.train_labels[held]


def _acc(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * (logits.argmax(1) == labels).double().mean().item()


def seconds(model: torch.nn.Module, loader: DeviceLoader, tta: int | str) -> float:
    """One ``evaluate_model`` at ``tta`` (after a warm-up batch), wall seconds."""
    with torch.inference_mode():
        model(next(iter(loader.epoch(0)))[0])
    started = time.perf_counter()
    evaluate_model(model, loader, tta=tta)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--every", type=int, default=1, help="use every N-th test image (a spread-out subset)")
    parser.add_argument("--no-time", action="store_true", help="the accuracies only (no timing)")
    parser.add_argument("--split", choices=("val", "test"), default="test",
                        help="val: the training images each run held out (choose there); test: report")
    args = parser.parse_args()
    data = load_cifar10()
    rows: dict[str, list[float]] = {}
    times: dict[str, list[float]] = {}
    for checkpoint in args.checkpoints:
        loaded = load_model(args.model, checkpoint)
        model = loaded.model.eval().to(memory_format=torch.channels_last)
        images, labels = images_of(args.split, data, loaded.trained)
        keep = torch.arange(0, len(labels), args.every)
        loader = DeviceLoader(images[keep], labels[keep], 500, "cpu", train=False,
                              channels_last=True, mean=loaded.trained["mean"], std=loaded.trained["std"])
        found = accuracies(model, loader)
        cost = {} if args.no_time else {"0": seconds(model, loader, 0), "2": seconds(model, loader, 2),
                                        "selective 0.25": seconds(model, loader, "selective")}
        for key, value in found.items():
            rows.setdefault(key, []).append(value)
        for key, value in cost.items():
            times.setdefault(key, []).append(value)
        print(checkpoint, {k: round(v, 2) for k, v in found.items()}, {k: round(v, 1) for k, v in cost.items()},
              flush=True)
    n = len(args.checkpoints)
    print(f"\n{args.model}, n={n} checkpoints, {len(keep):,} {args.split} images each")
    for key, values in rows.items():
        spread = f" ± {statistics.stdev(values):.2f}" if n > 1 else ""
        gap = [v - w for v, w in zip(values, rows["2"])]
        print(f"  TTA {key:>24}: {statistics.mean(values):.2f}%{spread}   against TTA 2: "
              f"{statistics.mean(gap):+.3f} ({min(gap):+.2f} to {max(gap):+.2f})")
    for key, values in times.items():
        spread = f" ± {statistics.stdev(values):.1f}" if n > 1 else ""
        print(f"  seconds at TTA {key:>15}: {statistics.mean(values):.1f}{spread} "
              f"({statistics.mean(values) / statistics.mean(times['2']):.2f}x TTA 2's)")


if __name__ == "__main__":
    main()
