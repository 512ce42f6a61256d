"""Time to accuracy: train a model end to end from the CLI and report test accuracy against wall time.

Each run is a whole `cifarctl train MODEL --json` process (start-up, data loading, training and the
final evaluation all count), on the cached dataset of CIFARCTL_HOME. Several seeds give mean and
standard deviation.

    python bench/time_to_accuracy.py airbench94 --seeds 0 1 2 --device cpu
    python bench/time_to_accuracy.py airbench94 --epochs 20 --device cpu -- --tta 2

`--budget S` runs the model's recipe for S seconds of wall time instead (open-ended epochs, stopped
with SIGINT, which saves the step reached) and evaluates that checkpoint: the course's VGG-16 recipe
given airbench94's time, for example:

    python bench/time_to_accuracy.py vgg16 --budget 1300 --device cpu
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cifarctl(*args: str) -> list[str]:
    return [sys.executable, "-m", "cifarctl", *args]


def hardware() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{cpu}, {os.cpu_count()} cores"


def timed_run(model: str, seed: int, device: str, epochs: int | None, extra: list[str], out: Path) -> dict:
    args = ["train", model, "--device", device, "--seed", str(seed), "--offline", "--json", "--out", str(out)]
    if epochs:
        args += ["--epochs", str(epochs)]
    started = time.perf_counter()
    proc = subprocess.run(cifarctl(*args, *extra), capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"{model} seed {seed} failed: {proc.stderr.strip().splitlines()[-1:]}")
    report = json.loads(proc.stdout)
    return {"seed": seed, "wall_s": wall, "test_accuracy": report["test_accuracy"],
            "epochs": report["epochs_completed"], "images_per_s": report["images_per_s"], "tta": report["tta_level"]}


def budget_run(model: str, seed: int, device: str, budget: float, extra: list[str], out: Path) -> dict:
    """The model's recipe, open-ended, stopped by SIGINT after ``budget`` seconds, then evaluated."""
    args = ["train", model, "--device", device, "--seed", str(seed), "--offline", "--epochs", "1000",
            "--out", str(out), "--save-every", "1000000"]
    started = time.perf_counter()
    proc = subprocess.Popen(cifarctl(*args, *extra), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        proc.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # the trainer saves the step it reached, then exits 130
        proc.wait()
    wall = time.perf_counter() - started
    evaluated = subprocess.run(cifarctl("evaluate", model, "--ckpt", str(out / "last.pt"), "--device", device,
                                        "--offline", "--json"), capture_output=True, text=True)
    if evaluated.returncode:
        raise SystemExit(f"evaluating {out / 'last.pt'} failed: {evaluated.stderr.strip()}")
    state = json.loads(evaluated.stdout)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = max((r["epoch"] for r in records if r["type"] == "epoch"), default=0)
    return {"seed": seed, "wall_s": wall, "test_accuracy": state["accuracy"], "epochs": epochs,
            "global_step": state["global_step"], "tta": state["tta_level"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--budget", type=float, help="seconds of wall time instead of the recipe's epochs")
    parser.add_argument("--keep", type=Path, help="keep the run folders under this folder")
    parser.add_argument("extra", nargs="*", help="more `cifarctl train` flags, after --")
    args = parser.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="tta-bench-"))
    rows = []
    for seed in args.seeds:
        out = root / f"{args.model}-seed{seed}"
        if args.budget:
            row = budget_run(args.model, seed, args.device, args.budget, args.extra, out)
        else:
            row = timed_run(args.model, seed, args.device, args.epochs, args.extra, out)
        rows.append(row)
        print(json.dumps(row), flush=True)
    accuracies = [r["test_accuracy"] for r in rows]
    walls = [r["wall_s"] for r in rows]
    spread = f" ± {statistics.stdev(accuracies):.2f}" if len(rows) > 1 else " (n=1)"
    print(f"{args.model}: test accuracy {statistics.mean(accuracies):.2f}%{spread}, "
          f"wall {statistics.mean(walls) / 60:.1f} min, epochs {rows[0]['epochs']}, on {hardware()}")


if __name__ == "__main__":
    main()
