"""Side-by-side benchmark: the seed's loop vs cifarctl's engine, same model, data and steps.

    python bench/compare.py --model vgg16 --device cpu --train-steps 8 --eval-images 2000
    python bench/compare.py --model resnet50 --device cuda --train-steps 300 --eval-images 10000

Each measurement runs in its own process, one after the other (no contention), and prints images/s;
the table gives the ratio (cifarctl / seed), the model's FLOPs per image (2 x MACs forward, 3x that
for a training step) and the FLOP/s achieved. Data: the cached CIFAR-10 if present, else random
CIFAR-shaped data (--data fake); throughput does not depend on pixel values.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _data(kind: str):
    from cifarctl.data import cache_info, fake_cifar10, load_cifar10

    if kind == "cifar10" or (kind == "auto" and cache_info() is not None):
        return load_cifar10()
    return fake_cifar10()


def worker(args: argparse.Namespace) -> dict:
    from cifarctl.data import DeviceLoader
    from cifarctl.device import resolve_device
    from cifarctl.evaluation import evaluate_model
    from cifarctl.models import create_model

    torch.manual_seed(0)
    device = resolve_device(args.device)
    data = _data(args.data)
    model = create_model(args.model)
    n_train = (args.warmup + args.train_steps) * args.batch_size
    if args.worker == "seed-train":
        from seed_loop import seed_train

        return seed_train(model, data.train_images[:n_train], data.train_labels[:n_train], device,
                          args.train_steps, args.warmup, args.batch_size)
    if args.worker == "seed-eval":
        from seed_loop import seed_eval

        return seed_eval(model, data.test_images[: args.eval_images], data.test_labels[: args.eval_images], device)
    if args.worker == "cifarctl-train":
        return engine_train(args, data, device)
    # cifarctl-eval: the engine's evaluation as `cifarctl evaluate` runs it
    channels_last = args.channels_last if args.channels_last is not None else True
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    loader = DeviceLoader(data.test_images[: args.eval_images], data.test_labels[: args.eval_images],
                          args.eval_batch_size, device, train=False, channels_last=channels_last)
    if device.type == "cuda":  # one untimed pass: cudnn autotuning and lazy init are not throughput
        evaluate_model(model, loader, amp=args.amp)
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = evaluate_model(model, loader, amp=args.amp)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"images": result.images, "seconds": time.perf_counter() - start, "accuracy": result.accuracy}


def engine_train(args: argparse.Namespace, data, device: torch.device) -> dict:
    import tempfile

    from cifarctl.engine import TrainConfig
    from cifarctl.progress import NullProgress
    from cifarctl.training import Trainer

    stamps: list[float] = []
    steps = [0]

    class Clock(NullProgress):
        """Reads the clock after the warm-up steps and after the last one (syncing only there)."""

        def advance(self, amount: float = 0, **info: object) -> None:
            if amount != 1:
                return
            steps[0] += 1
            if steps[0] in (args.warmup, args.warmup + args.train_steps) or (args.warmup == 0 and steps[0] == 1):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                stamps.append(time.perf_counter())

    cfg = TrainConfig(model=args.model, epochs=1, batch_size=args.batch_size, max_steps=args.warmup + args.train_steps,
                      device=str(device), eval=False, save_every=10**9, log_every=10**9, amp=args.amp,
                      channels_last=args.channels_last, compile=args.compile)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, data, Path(tmp) / "run", progress=Clock())
        trainer.save = lambda best=False: None  # checkpoint I/O is not what is measured
        trainer.run()
    timed_steps = args.train_steps if args.warmup else args.train_steps - 1
    return {"images": timed_steps * args.batch_size, "seconds": stamps[-1] - stamps[0]}


def _run_worker(name: str, argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", name, *argv], capture_output=True, text=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if out.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", default="auto", choices=["auto", "cifar10", "fake"])
    parser.add_argument("--train-steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--eval-images", type=int, default=2000)
    parser.add_argument("--eval-batch-size", type=int, default=500)
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                        help="cifarctl side: mixed precision (the train default; evaluate's default is --no-amp)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--only", choices=["train", "eval"], default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    from cifarctl.models import create_model
    from cifarctl.trace import inspect_model

    argv = [a for a in sys.argv[1:] if not a.startswith("--json")]
    if args.json:
        argv = [a for a in argv if a != str(args.json)]
    macs = inspect_model(lambda: create_model(args.model), [1, 3, 32, 32]).total_macs
    flops = {"train": 3 * 2 * macs, "eval": 2 * macs}
    rows = []
    for phase in ("train", "eval"):
        if args.only and phase != args.only:
            continue
        seed = _run_worker(f"seed-{phase}", argv)
        ours = _run_worker(f"cifarctl-{phase}", argv)
        s_rate, o_rate = seed["images"] / seed["seconds"], ours["images"] / ours["seconds"]
        rows.append({"phase": phase, "seed_images_per_s": s_rate, "cifarctl_images_per_s": o_rate,
                     "ratio": o_rate / s_rate, "gflop_per_image": flops[phase] / 1e9,
                     "seed_gflop_s": s_rate * flops[phase] / 1e9, "cifarctl_gflop_s": o_rate * flops[phase] / 1e9})
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu x{torch.get_num_threads()}"
    print(f"{args.model} on {device}, torch {torch.__version__}, batch {args.batch_size}, "
          f"{args.train_steps} timed train steps after {args.warmup}, {args.eval_images} eval images")
    print(f"{'phase':6} {'seed img/s':>11} {'cifarctl img/s':>15} {'ratio':>7} {'GFLOP/img':>10} "
          f"{'seed GFLOP/s':>13} {'cifarctl GFLOP/s':>17}")
    for r in rows:
        print(f"{r['phase']:6} {r['seed_images_per_s']:11.1f} {r['cifarctl_images_per_s']:15.1f} {r['ratio']:6.2f}x "
              f"{r['gflop_per_image']:10.3f} {r['seed_gflop_s']:13.1f} {r['cifarctl_gflop_s']:17.1f}")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "device": device, "torch": torch.__version__,
                                         "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
