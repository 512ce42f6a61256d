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

A time budget fitted by cifarctl itself, against the recipe's own schedule stopped by the clock (the
way Lightning's ``max_time`` stops a run), for the same whole-process time:

    python bench/time_to_accuracy.py airbench94 --device cpu -- --time-budget 5m
    python bench/time_to_accuracy.py airbench94 --device cpu --clock 300 --eval-tta 0 --eval-reserve 40

`--clock S` trains the recipe at its own length, stops it with SIGINT when S minus ``--eval-reserve``
seconds have passed, and evaluates the checkpoint with ``--eval-tta``: the total is about S.
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
    row = {"seed": seed, "wall_s": wall, "test_accuracy": report["test_accuracy"],
           "epochs": report["epochs_completed"], "images_per_s": report["images_per_s"], "tta": report["tta_level"],
           "global_step": report["global_step"]}
    if report.get("budget"):
        row.update(budget_s=report["budget"]["budget_s"], epochs=report["budget"]["epochs"])
    return row


def clock_run(model: str, seed: int, device: str, clock: float, reserve: float, tta: int, extra: list[str],
              out: Path) -> dict:
    """The recipe at its own length, stopped by SIGINT at ``clock - reserve`` seconds, then evaluated."""
    args = ["train", model, "--device", device, "--seed", str(seed), "--offline", "--out", str(out)]
    started = time.perf_counter()
    proc = subprocess.Popen(cifarctl(*args, *extra), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        proc.wait(timeout=max(clock - reserve, 1))
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # the trainer saves the step it reached, then exits 130
        proc.wait()
    train_wall = time.perf_counter() - started
    evaluated = subprocess.run(cifarctl("evaluate", model, "--ckpt", str(out / "last.pt"), "--device", device,
                                        "--offline", "--json", "--tta", str(tta)), capture_output=True, text=True)
    wall = time.perf_counter() - started
    if evaluated.returncode:
        raise SystemExit(f"evaluating {out / 'last.pt'} failed: {evaluated.stderr.strip()}")
    state = json.loads(evaluated.stdout)
    return {"seed": seed, "wall_s": wall, "train_wall_s": train_wall, "clock_s": clock,
            "test_accuracy": state["accuracy"], "global_step": state["global_step"], "tta": state["tta_level"],
            "epoch": state["epoch"], "epochs": state["epoch"]}


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
    parser.add_argument("--clock", type=float, help="stop the recipe's own schedule after this many seconds in all")
    parser.add_argument("--eval-reserve", type=float, default=0.0, help="with --clock: seconds kept for evaluation")
    parser.add_argument("--eval-tta", type=int, default=0, help="with --clock: the evaluation's TTA level")
    parser.add_argument("--keep", type=Path, help="keep the run folders under this folder")
    parser.add_argument("extra", nargs="*", help="more `cifarctl train` flags, after --")
    args, unknown = parser.parse_known_args()  # flags after `--` are cifarctl's
    args.extra = [*args.extra, *(arg for arg in unknown if arg != "--")]

    root = args.keep or Path(tempfile.mkdtemp(prefix="tta-bench-"))
    rows = []
    for seed in args.seeds:
        out = root / f"{args.model}-seed{seed}"
        if args.clock:
            row = clock_run(args.model, seed, args.device, args.clock, args.eval_reserve, args.eval_tta, args.extra, out)
        elif args.budget:
            row = budget_run(args.model, seed, args.device, args.budget, args.extra, out)
        else:
            row = timed_run(args.model, seed, args.device, args.epochs, args.extra, out)
        rows.append(row)
        print(json.dumps(row), flush=True)
    accuracies = [r["test_accuracy"] for r in rows]
    walls = [r["wall_s"] for r in rows]
    spread = f" ± {statistics.stdev(accuracies):.2f}" if len(rows) > 1 else " (n=1)"
    print(f"{args.model}: test accuracy {statistics.mean(accuracies):.2f}%{spread}, "
          f"wall {statistics.mean(walls) / 60:.2f} min, epochs {rows[0]['epochs']}, on {hardware()}")


if __name__ == "__main__":
    main()
