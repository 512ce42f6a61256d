"""Draw test accuracy against whole-process minutes, one line per way of spending the time.

    python bench/plot_time_to_accuracy.py docs/time_to_accuracy.csv docs/time_to_accuracy.png

The CSV has the columns ``way,minutes,accuracy`` (one row per measured run, from
``bench/time_to_accuracy.py``); rows of one way are joined in order of minutes.
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from pathlib import Path


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    ways: dict[str, list[tuple[float, float]]] = defaultdict(list)
    with source.open(newline="") as fh:
        for row in csv.DictReader(fh):
            ways[row["way"]].append((float(row["minutes"]), float(row["accuracy"])))
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for way, points in ways.items():
        points.sort()
        ax.plot([m for m, _ in points], [a for _, a in points], marker="o", label=way)
        for minutes, accuracy in points:
            ax.annotate(f"{accuracy:.1f}%", (minutes, accuracy), textcoords="offset points", xytext=(4, -12),
                        fontsize=8)
    ax.set_xlabel("minutes, whole process (start-up to printed result)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("airbench94 on a 2-core AVX2 EPYC (fp32), CIFAR-10 JPEG copy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(target)
    print(f"drew {target}")


if __name__ == "__main__":
    main()
