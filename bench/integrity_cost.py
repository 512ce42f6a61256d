"""What the integrity checks cost: verifying a checkpoint before loading it, and loading the dataset cache
with the test split's sha256 checked (and the train split's, with --verify).

Run alone (nothing else on the machine), on the cached dataset of CIFARCTL_HOME:

    python bench/integrity_cost.py --repeat 7
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from cifarctl.data.cifar10 import load_cifar10
from cifarctl.models import create_model
from cifarctl.run.checkpoint import save_checkpoint, verify_container


def median_s(fn, repeat: int) -> float:
    fn()  # warm the page cache and the code paths
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="integrity-cost-"))
    model = create_model("resnet50")
    ours, raw = folder / "ours.pt", folder / "raw.pt"
    save_checkpoint(ours, {"model": model.state_dict(), "model_name": "resnet50"})
    torch.save(model.state_dict(), raw)
    rows = [
        (f"verify a {ours.stat().st_size / 1e6:.0f} MB cifarctl checkpoint (sha256 + every record's CRC-32)",
         median_s(lambda: verify_container(ours), args.repeat)),
        (f"verify a {raw.stat().st_size / 1e6:.0f} MB raw state_dict (CRC-32 of every record)",
         median_s(lambda: verify_container(raw), args.repeat)),
        ("torch.load of the raw file, for scale",
         median_s(lambda: torch.load(raw, map_location="cpu", weights_only=True), args.repeat)),
        ("load the dataset cache, test split's sha256 checked", median_s(lambda: load_cifar10(), args.repeat)),
        ("load_cifar10(verify=True): the train split's too", median_s(lambda: load_cifar10(verify=True), args.repeat)),
    ]
    for what, seconds in rows:
        print(f"| {what} | {seconds:.3f} s |")


if __name__ == "__main__":
    main()
