"""Your own model through every command, as a new user runs them: a folder of public CIFAR-10 model files.

For each model: `inspect`, `train` a few steps, `train --resume`, `evaluate`, `predict` and `export`
to ONNX (checked with onnxruntime), each a fresh `python -m cifarctl` process, on a small generated
dataset in a scratch CIFARCTL_HOME (so it downloads nothing and the evaluations are quick). The files
are used as they are; none is changed. Prints one line per model and command, and a summary.

    python bench/user_models_check.py PATH/TO/models          # e.g. a clone of kuangliu/pytorch-cifar

The default list is that repository's models (one class or factory per file, the way most CIFAR
repositories ship them), with the constructor arguments two of them need, and torchvision:resnet18.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = [
    ("resnet.py:ResNet18", []), ("preact_resnet.py:PreActResNet18", []), ("densenet.py:DenseNet121", []),
    ("mobilenetv2.py:MobileNetV2", []), ("shufflenetv2.py:ShuffleNetV2", ["net_size=0.5"]),
    ("efficientnet.py:EfficientNetB0", []), ("googlenet.py:GoogLeNet", []), ("dla.py:DLA", []),
    ("regnet.py:RegNetX_200MF", []), ("senet.py:SENet18", []), ("vgg.py:VGG", ["vgg_name=VGG11"]),
    ("lenet.py:LeNet", []), ("torchvision:resnet18", []),
]


def run(args: list[str], env: dict[str, str]) -> tuple[bool, str, float]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cifarctl", *args], env=env, capture_output=True, text=True)
    last = (done.stderr.strip().splitlines() or done.stdout.strip().splitlines() or [""])[-1]
    return done.returncode == 0, last[:160], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the folder of model files")
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    from PIL import Image

    from cifarctl.data.cifar10 import fake_cifar10, write_cache

    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {**os.environ, "CIFARCTL_HOME": str(root / "home")}
        os.environ["CIFARCTL_HOME"] = env["CIFARCTL_HOME"]
        write_cache(fake_cifar10(train=256, test=64, seed=1))
        Image.new("RGB", (48, 40), (30, 120, 200)).save(root / "picture.png")
        for spec, kwargs in MODELS:
            model = spec if spec.startswith("torchvision:") else f"{args.folder / spec.split(':')[0]}:{spec.split(':')[1]}"
            extra = ["--model-kwargs", *kwargs] if kwargs else []
            run_dir, ckpt = root / spec.replace(":", "-"), root / spec.replace(":", "-") / "last.pt"
            common = ["--offline", "--device", "cpu"]
            commands = {
                "inspect": ["inspect", model, "--input", "3x32x32", *extra],
                "train": ["train", model, "--max-steps", str(args.steps), "--batch-size", "16", "--out", str(run_dir),
                          *extra, *common],
                "resume": ["train", model, "--resume", str(run_dir), "--max-steps", str(args.steps + 1), *common],
                "evaluate": ["evaluate", model, "--ckpt", str(ckpt), "--batch-size", "32", *extra, *common],
                "predict": ["predict", model, "--ckpt", str(ckpt), str(root / "picture.png"), *extra],
                "export": ["export", model, "--ckpt", str(ckpt), "--out", str(root / "model.onnx"), *extra],
            }
            for name, command in commands.items():
                ok, last, seconds = run(command, env)
                failures += not ok
                print(f"{'ok  ' if ok else 'FAIL'} {spec:34} {name:8} {seconds:5.1f}s  {last}", flush=True)
    print(f"{len(MODELS)} models x 6 commands: {failures} failed")
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
