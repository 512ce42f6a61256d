"""`cifarctl inspect` against torchinfo.summary on the same model and input, timed side by side.

    pip install torchinfo
    python bench/inspect_vs_torchinfo.py --model resnet50 --input 3x224x224 --repeat 5

Two timings for each: in one process (model build + trace + statistics, median of --repeat runs),
and a whole command as a user runs it (a fresh Python process each time, imports included), the
two commands interleaved. Both run a real forward pass on the CPU at this size: torchinfo at its
input's batch (1 here), cifarctl at its default batch of 2 (above 2x224x224 pixels it traces on the
meta device instead). Their MACs differ by what each counts (docs/inspect.md).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def in_process(args: argparse.Namespace) -> tuple[float, float, dict]:
    import torchinfo

    from cifarctl.models import create_model
    from cifarctl.trace import inspect_model, parse_input_shape

    shape = parse_input_shape(args.input, args.batch)
    ours, theirs = [], []
    for _ in range(args.repeat):
        t = time.perf_counter()
        result = inspect_model(lambda: create_model(args.model), shape, args.model)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        stats = torchinfo.summary(create_model(args.model), input_size=[1, *shape[1:]], verbose=0, device="cpu")
        theirs.append(time.perf_counter() - t)
    facts = {"cifarctl_params": result.total_params, "cifarctl_macs": result.total_macs,  # per image
             "torchinfo_params": stats.total_params, "torchinfo_macs": stats.total_mult_adds}
    return statistics.median(ours), statistics.median(theirs), facts


def whole_process(args: argparse.Namespace) -> tuple[float, float]:
    shape = "[" + ", ".join(str(d) for d in ([1] if args.input.count("x") == 2 else []) +
                            [int(d) for d in args.input.split("x")]) + "]"
    ours_cmd = [sys.executable, "-m", "cifarctl", "inspect", args.model, "--input", args.input, "--json",
                *(["--batch", str(args.batch)] if args.batch else [])]
    theirs_cmd = [sys.executable, "-c",
                  "import torchinfo; from cifarctl.models import create_model; "
                  f"print(torchinfo.summary(create_model('{args.model}'), input_size={shape}, device='cpu'))"]
    ours, theirs = [], []
    for _ in range(args.repeat):
        for cmd, sink in ((ours_cmd, ours), (theirs_cmd, theirs)):
            t = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            sink.append(time.perf_counter() - t)
    return statistics.median(ours), statistics.median(theirs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--input", default="3x224x224")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch", type=int, default=None, help="cifarctl's --batch (default: its own, 2)")
    args = parser.parse_args()
    ours, theirs, facts = in_process(args)
    ours_p, theirs_p = whole_process(args)
    print(f"{args.model} on {args.input} (cifarctl: batch {args.batch or 2}; torchinfo: batch 1), median of {args.repeat}")
    print(f"{'':22} {'cifarctl inspect':>17} {'torchinfo.summary':>18} {'ratio':>7}")
    print(f"{'in one process':22} {ours:16.3f}s {theirs:17.3f}s {theirs / ours:6.1f}x")
    print(f"{'whole command':22} {ours_p:16.3f}s {theirs_p:17.3f}s {theirs_p / ours_p:6.1f}x")
    print(f"params {facts['cifarctl_params']:,} vs {facts['torchinfo_params']:,}; "
          f"MACs {facts['cifarctl_macs']:,} vs {facts['torchinfo_macs']:,}")


if __name__ == "__main__":
    main()
