"""A time budget on a machine that is busy for a while: epochs trained and seconds used, quiet against loaded.

Each run is a whole `cifarctl train MODEL --time-budget B --json` process on the cached dataset. The runs
take turns: quiet, loaded, quiet, loaded ... (``--pairs`` of them). In a loaded run one busy thread (a
spinning process, as another program of the user's would be) starts ``--load-at`` seconds after the run and
spins for ``--load-for`` seconds. The budget's promise: a transient costs the run the steps it could not
take while the machine was busy, not the rest of its plan, and the run ends within a few seconds of its
budget either way.

    python bench/budget_under_load.py bench/models/plain_quarter.py:PlainQuarter --budget 2m --device cpu
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from time_to_accuracy import cifarctl, hardware  # noqa: E402

SPIN = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


def load(at: float, seconds: float, stop: threading.Event) -> None:
    """One busy thread from ``at`` seconds on, for ``seconds``."""
    if stop.wait(at):
        return
    subprocess.run([sys.executable, "-c", SPIN.format(seconds=seconds)], check=True)


def run(model: str, budget: str, device: str, out: Path, loaded: tuple[float, float] | None,
        extra: list[str]) -> dict:
    args = ["train", model, "--time-budget", budget, "--device", device, "--offline", "--json", "--out", str(out)]
    stop = threading.Event()
    spinner = threading.Thread(target=load, args=(*loaded, stop)) if loaded else None
    started = time.perf_counter()
    if spinner:
        spinner.start()
    proc = subprocess.run(cifarctl(*args, *extra), capture_output=True, text=True)
    wall = time.perf_counter() - started
    stop.set()
    if spinner:
        spinner.join()
    if proc.returncode:
        raise SystemExit(f"{model} failed: {proc.stderr.strip().splitlines()[-1:]}")
    report = json.loads(proc.stdout)
    config = json.loads((out / "config.json").read_text())
    train_images = 50_000 - (config.get("val_split") or 0)
    refits = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if r.get("type") == "budget"]
    return {"loaded": bool(loaded), "wall_s": wall, "budget_s": config["time_budget"],
            "epochs": report["global_step"] * config["batch_size"] / train_images,
            "steps": report["global_step"], "first_plan": refits[0].get("steps") if refits else None,
            "refits": len(refits) - 1, "test_accuracy": report["test_accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--budget", default="2m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pairs", type=int, default=1)
    parser.add_argument("--load-at", type=float, default=40.0)
    parser.add_argument("--load-for", type=float, default=25.0)
    parser.add_argument("extra", nargs="*", help="more train options, after --")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for pair in range(args.pairs):
            for loaded in (None, (args.load_at, args.load_for)):
                row = run(args.model, args.budget, args.device, Path(tmp) / f"{pair}-{bool(loaded)}", loaded,
                          args.extra)
                rows.append(row)
                print(json.dumps(row), flush=True)
    quiet = [r for r in rows if not r["loaded"]]
    busy = [r for r in rows if r["loaded"]]
    ratio = statistics.median(b["epochs"] / q["epochs"] for q, b in zip(quiet, busy))
    over = max(abs(r["wall_s"] - r["budget_s"]) for r in rows)
    print(f"loaded/quiet epochs: {ratio:.2f}x (median of {len(busy)} pairs); the furthest end from the budget: "
          f"{over:.1f} s; on {hardware()}")


if __name__ == "__main__":
    main()
