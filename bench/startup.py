"""How fast the command line answers: help and shell completion against ``python -c "import torch"``.

    python bench/startup.py --repeat 9

Every command is a whole fresh process, run interleaved with the others in one loop, so the
machine's state is shared; the table gives medians and the ratio to importing torch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# The installed console script, as a user's shell runs it.
CIFARCTL = str(Path(sys.executable).with_name("cifarctl"))
COMMANDS = {
    'python -c "import torch"': ([sys.executable, "-c", "import torch"], {}),
    "cifarctl --help": ([CIFARCTL, "--help"], {}),
    "cifarctl train --help": ([CIFARCTL, "train", "--help"], {}),
    "cifarctl inspect --help": ([CIFARCTL, "inspect", "--help"], {}),
    # What bash runs on <TAB> after `cifarctl tr`: the program with Click's completion variables set.
    "completion (bash, `cifarctl tr<TAB>`)": ([CIFARCTL], {"_CIFARCTL_COMPLETE": "complete_bash",
                                                           "COMP_WORDS": "cifarctl tr", "COMP_CWORD": "1"}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeat):
        for name, (cmd, env) in COMMANDS.items():
            t = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, env={**os.environ, **env})
            times[name].append(time.perf_counter() - t)
            if done.returncode != 0:
                raise SystemExit(f"{name} failed: {done.stderr.decode()[-500:]}")
    torch_time = statistics.median(times['python -c "import torch"'])
    print(f"median of {args.repeat} whole processes, interleaved")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:42} {median:6.3f}s  {median / torch_time:5.2f}x import torch")


if __name__ == "__main__":
    main()
