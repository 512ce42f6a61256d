"""Measure the airbench family's frontier and write the file ``cifarctl train airbench --time-budget`` reads.

The frontier is what each candidate (a member and a recipe) reaches after a budgeted run of each
length, and the times on the machine it was measured on that turn epochs into seconds. Three steps,
each alone on the machine (nothing else running: they are timings):

1. the runs, one per candidate and budget (real CIFAR-10 imported into CIFARCTL_HOME), each evaluated
   afterwards at TTA levels 0, 1 and 2 (the budget's own evaluation used one; the frontier needs all
   three for the TTA rule); ``runs.jsonl`` gets a line per run::

       python bench/frontier.py run --out /tmp/frontier airbench94_half:muon:5m airbench94:paper:2m ...

2. each member's evaluation time per image on this machine (the chooser scales an untimed member's by
   these ratios)::

       python bench/frontier.py probe --out /tmp/frontier

   A run made another way (the recipe's own full length, say) joins the frontier as a point, with its
   epochs and its accuracy at each TTA level::

       python bench/frontier.py point airbench94:paper:full --out /tmp/frontier --epochs 10 \
           --accuracy 89.69 90.34 90.41 --source "cifarctl train airbench94 --device cpu, evaluated at TTA 0-2"

   A recipe measured later, on another machine, joins the shipped frontier with ``merge``: its points as
   measured (epochs and accuracy pair the same anywhere), its seconds per image the member's ``--like``
   recipe's there times ``--ratio``, its cost over that recipe's measured side by side where its runs
   were made::

       python bench/frontier.py merge --out /tmp/record --like muon --ratio 0.99 --cpu "2-core AMD EPYC (Zen 3, fp32)"

3. the file itself, from both, and the plot in docs/::

       python bench/frontier.py build --out /tmp/frontier --cpu "2-core AMD EPYC (Zen 4, bf16)"
       python bench/frontier.py plot --out /tmp/frontier

   The plot also draws ``clock.jsonl`` there, if present: the rows ``bench/time_to_accuracy.py
   airbench94 --clock S --eval-tta 0 --eval-reserve R`` prints, the default cut by the clock.

docs/accuracy.md has the runs this release ships, and how they were made.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

FRONTIER = Path(__file__).resolve().parents[1] / "src" / "cifarctl" / "training" / "frontier.json"
TRAIN_IMAGES = 50_000


def run(out: Path, specs: list[str], seed: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        model, recipe, budget = spec.split(":")
        run_dir = out / "runs" / f"{model}_{recipe}_{budget}_s{seed}_{time.strftime('%H%M%S')}"
        started = time.perf_counter()
        code = subprocess.call(["cifarctl", "train", model, "--recipe", recipe, "--device", "cpu",
                                "--time-budget", budget, "--seed", str(seed), "--out", str(run_dir)])
        wall = time.perf_counter() - started
        accuracy = {}
        for level in (0, 1, 2):
            shown = subprocess.run(["cifarctl", "evaluate", model, "--ckpt", str(run_dir / "last.pt"),
                                    "--device", "cpu", "--tta", str(level), "--json"],
                                   capture_output=True, text=True, check=False)
            accuracy[level] = json.loads(shown.stdout)["accuracy"] if shown.returncode == 0 else None
        record = {"spec": spec, "rc": code, "wall": round(wall, 1), "dir": str(run_dir), "seed": seed,
                  **{f"tta{k}": [v, None] for k, v in accuracy.items()}}
        with open(out / "runs.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


def point(out: Path, spec: str, epochs: float, accuracy: list[float], source: str) -> None:
    """A run made outside ``run`` (no run folder to read its times from): its epochs and accuracies only."""
    out.mkdir(parents=True, exist_ok=True)
    record = {"spec": spec, "rc": 0, "epochs": epochs, "source": source,
              **{f"tta{level}": [value, None] for level, value in enumerate(accuracy)}}
    with open(out / "runs.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def probe(out: Path, repeats: int) -> None:
    import torch

    from cifarctl.device import autocast_dtype, uses_channels_last
    from cifarctl.models import create_model
    from cifarctl.models.registry import families
    from cifarctl.training.tta_choice import time_eval_levels

    device = torch.device("cpu")
    found: dict = {"eval_s_per_image": {}}
    for member in families()["airbench"]:
        net = create_model(member)  # in the memory format a training run evaluates it in
        if uses_channels_last(net, device, autocast_dtype(device, True), registered=True):
            net = net.to(memory_format=torch.channels_last)
        batch = torch.randn(500, 3, 32, 32)
        levels = [time_eval_levels(net, batch, 2, amp=False) for _ in range(repeats)]
        found["eval_s_per_image"][member] = {lv: statistics.median(t[lv] for t in levels) / 500 for lv in (0, 1, 2)}
        print(member, found["eval_s_per_image"][member], flush=True)
    (out / "probe.json").write_text(json.dumps(found, indent=1))


def run_times(run_dir: Path) -> tuple[float, float | None, float, int, float]:
    """One budgeted run's (epochs trained, training seconds per image after its first ``early`` epochs (None
    if it stopped within them), seconds per image in them, ``early``, start-up seconds before training).

    ``early`` is the epochs airbench's whitened stem trains its bias (its model option, 3 by default): until
    then the backward pass reaches the stem, and its steps cost more (1.2-1.4x at the narrow widths on CPU A).
    """
    config = json.loads((run_dir / "config.json").read_text())
    plan = config["budget_plan"]
    whitened = config.get("init_from_data", config.get("whiten"))
    early = (config.get("model_options") or {}).get("whiten_bias_epochs", config.get("whiten_bias_epochs", 3)) \
        if whitened else 0
    seconds, epochs, done = [0.0, 0.0], [0.0, 0.0], 0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("type") != "epoch":
            continue
        phase = 0 if record["epoch"] <= early else 1
        seconds[phase] += record["seconds"]
        epochs[phase] += (record["global_step"] - done) / plan["steps_per_epoch"]
        done = record["global_step"]
    startup = plan["spent_s"] - plan["measured_steps"] * plan["step_s"]
    per_image = [s / (e * TRAIN_IMAGES) if e else None for s, e in zip(seconds, epochs)]
    return sum(epochs), per_image[1], per_image[0] or per_image[1], early, startup


def build(out: Path, cpu: str) -> None:
    probed = json.loads((out / "probe.json").read_text())
    candidates: dict[tuple[str, str], dict] = {}
    startups = []
    for line in (out / "runs.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["rc"] != 0 or "tta0" not in record:
            continue
        model, recipe, _ = record["spec"].split(":")
        entry = candidates.setdefault((model, recipe), {"model": model, "recipe": recipe, "points": [],
                                                        "speeds": [], "early_speeds": [], "early_epochs": 0})
        if "epochs" in record:  # a point: accuracy only, its times unknown
            epochs = record["epochs"]
        else:
            epochs, s_per_image, early_s, entry["early_epochs"], startup = run_times(Path(record["dir"]))
            startups.append(startup)
            entry["early_speeds"].append(early_s)
            if s_per_image is not None:
                entry["speeds"].append(s_per_image)
        entry["points"].append({"epochs": round(epochs, 3), "budget": record["spec"].split(":")[2],
                                "seed": record.get("seed", 0),
                                "accuracy": {str(lv): record[f"tta{lv}"][0] for lv in (0, 1, 2)}})
    shipped = []
    for entry in candidates.values():
        early = entry.pop("early_speeds")
        entry["train_s_per_image"] = statistics.median(entry.pop("speeds") or early)
        entry["early_s_per_image"] = statistics.median(early) if entry["early_epochs"] else None
        entry["points"] = merge_seeds(entry["points"])
        shipped.append(entry)
    frontier = {
        "measured_on": cpu,
        "how": "budgeted runs of each candidate (cifarctl train MEMBER --recipe R --time-budget B --device cpu), "
               "on the JPEG copy of CIFAR-10, each evaluated after at TTA 0, 1 and 2; a point whose budget is "
               "'full' is the recipe's own length, unbudgeted (docs/accuracy.md); a candidate's training "
               "seconds per image are the runs' median, early_s_per_image for its first early_epochs (the "
               "stem's bias trains in them) and train_s_per_image after; bench/frontier.py",
        "eval_s_per_image": probed["eval_s_per_image"],
        "startup_s": round(statistics.median(startups), 2),
        "candidates": sorted(shipped, key=lambda c: (c["model"], c["recipe"])),
    }
    FRONTIER.write_text(json.dumps(frontier, indent=1) + "\n")
    print(f"wrote {FRONTIER}")


def merge(out: Path, like: str, ratio: float, cpu: str) -> None:
    """Add the candidates of ``out``'s runs (a recipe measured on another machine than the frontier's) to the
    shipped frontier: their points as measured, and their seconds per image in the frontier machine's units,
    the member's ``like`` recipe's there times ``ratio`` (this recipe's cost per image over ``like``'s,
    measured side by side on the machine the runs were made on). A candidate already shipped is replaced, and
    ``measured_on`` says where the new lines come from (``cpu``)."""
    shipped = json.loads(FRONTIER.read_text())
    known = {(c["model"], c["recipe"]): c for c in shipped["candidates"]}
    added: dict[tuple[str, str], dict] = {}
    for line in (out / "runs.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["rc"] != 0 or "tta0" not in record:
            continue
        model, recipe, budget = record["spec"].split(":")
        epochs, _, _, early, _ = run_times(Path(record["dir"]))
        base = known[model, like]
        entry = added.setdefault((model, recipe), {
            "model": model, "recipe": recipe, "points": [], "early_epochs": early,
            "train_s_per_image": base["train_s_per_image"] * ratio,
            "early_s_per_image": (base.get("early_s_per_image") or base["train_s_per_image"]) * ratio})
        entry["points"].append({"epochs": round(epochs, 3), "budget": budget, "seed": record.get("seed", 0),
                                "accuracy": {str(lv): record[f"tta{lv}"][0] for lv in (0, 1, 2)}})
    for entry in added.values():
        entry["points"] = merge_seeds(entry["points"])
        known[entry["model"], entry["recipe"]] = entry
    shipped["candidates"] = sorted(known.values(), key=lambda c: (c["model"], c["recipe"]))
    for recipe in sorted({recipe for _, recipe in added}):
        where = f"the {recipe} recipe's lines on {cpu}"
        if where not in shipped["measured_on"]:
            shipped["measured_on"] += f"; {where}"
    FRONTIER.write_text(json.dumps(shipped, indent=1) + "\n")
    print(f"added {sorted(added)} to {FRONTIER}")


def merge_seeds(points: list[dict]) -> list[dict]:
    """Runs of one budget with several seeds: one point, their mean epochs and accuracies."""
    by_budget: dict[str, list[dict]] = {}
    for point in points:
        by_budget.setdefault(point["budget"], []).append(point)
    merged = []
    for budget, runs in by_budget.items():
        merged.append({"epochs": round(statistics.mean(p["epochs"] for p in runs), 3), "budget": budget,
                       "seeds": len(runs),
                       "accuracy": {lv: round(statistics.mean(p["accuracy"][lv] for p in runs), 2)
                                    for lv in ("0", "1", "2")}})
    return sorted(merged, key=lambda p: p["epochs"])


def plot(out: Path, image: Path) -> None:
    """Accuracy against the budget, one line per candidate (the best TTA level of each run), and the chooser's runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    lines: dict[str, dict[float, list[float]]] = {}
    chosen: dict[float, list[float]] = {}
    for line in (out / "runs.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["rc"] != 0 or record.get("extra"):  # a run with flags of its own (--no-amp) is another line
            continue
        model, recipe, budget = record["spec"].split(":")
        if "epochs" in record:  # a point of no budget: not on a minutes axis
            continue
        minutes = float(budget.rstrip("m"))
        if model == "airbench":
            final = [json.loads(x) for x in (Path(record["dir"]) / "metrics.jsonl").read_text().splitlines()
                     if '"test_acc"' in x][-1]["test_acc"]
            chosen.setdefault(minutes, []).append(final)
            continue
        best = max(record[f"tta{lv}"][0] for lv in (0, 1, 2))
        lines.setdefault(f"{model} {recipe}", {}).setdefault(minutes, []).append(best)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in sorted(lines.items()):
        xs = sorted(points)
        ax.plot(xs, [statistics.mean(points[x]) for x in xs], marker="o", label=label,
                linestyle="-" if "muon" in label else "--")
    if chosen:
        xs = sorted(chosen)
        ax.plot(xs, [statistics.mean(chosen[x]) for x in xs], marker="*", markersize=14, color="black",
                linestyle="none", label="airbench --time-budget (chosen; mean of its runs)")
    cut: dict[float, list[float]] = {}  # bench/time_to_accuracy.py --clock rows: the default cut by the clock
    if (out / "clock.jsonl").exists():
        for line in (out / "clock.jsonl").read_text().splitlines():
            row = json.loads(line)
            cut.setdefault(row["clock_s"] / 60, []).append(row["test_accuracy"])
    if cut:
        xs = sorted(cut)
        ax.plot(xs, [statistics.mean(cut[x]) for x in xs], marker="x", markersize=10, color="grey",
                linestyle=":", label="airbench94 (default), its schedule cut by the clock")
    ax.set_xscale("log")
    ax.set_xticks([2, 5, 15], ["2m", "5m", "15m"])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("time budget, whole command")
    ax.set_ylabel("test accuracy (%), best TTA level")
    ax.set_title("airbench family on a 2-core CPU (JPEG copy of CIFAR-10)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(image, dpi=110)
    print(f"drew {image}")


def table(out: Path) -> None:
    """The runs as a markdown table: each candidate's epochs and accuracy at each TTA level, per budget."""
    print("| candidate | budget | epochs | TTA 0 | TTA 1 | TTA 2 | whole command | s/image, first 3 epochs / after |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rows = []
    for line in (out / "runs.jsonl").read_text().splitlines():
        record = json.loads(line)
        model, recipe, budget = record["spec"].split(":")
        if record["rc"] != 0 or model == "airbench":
            continue
        if "epochs" in record:
            rows.append((model, recipe, math.inf, budget, record["epochs"], None, record))
            continue
        epochs, late_s, early_s, _, _ = run_times(Path(record["dir"]))
        rows.append((model, recipe, float(budget.rstrip("m")), budget, epochs, (early_s, late_s), record))
    for model, recipe, _, budget, epochs, s_per_image, record in sorted(rows, key=lambda r: (r[0], r[1], r[2])):
        accs = " | ".join(f"{record[f'tta{lv}'][0]:.2f}%" for lv in (0, 1, 2))
        wall = "-" if s_per_image is None else f"{record['wall']:.0f} s"
        speed = "-" if s_per_image is None else " / ".join("-" if s is None else f"{s * 1e3:.2f} ms"
                                                            for s in s_per_image)
        print(f"| {model} {recipe} | {budget} | {epochs:.2f} | {accs} | {wall} | {speed} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("run", "point", "probe", "build", "merge", "plot", "table"))
    parser.add_argument("specs", nargs="*", help="run: MEMBER:RECIPE:BUDGET ...; point: MEMBER:RECIPE:LABEL")
    parser.add_argument("--epochs", type=float, help="point: the epochs it trained")
    parser.add_argument("--accuracy", type=float, nargs=3, help="point: its test accuracy at TTA 0, 1 and 2")
    parser.add_argument("--source", default="", help="point: how it was made")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu", default=os.environ.get("FRONTIER_CPU", "this machine"))
    parser.add_argument("--like", default="muon", help="merge: the recipe whose shipped times the new ones scale")
    parser.add_argument("--ratio", type=float, default=1.0, help="merge: the new recipe's cost per image over --like's")
    parser.add_argument("--image", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "frontier.png")
    args = parser.parse_intermixed_args()  # the specs may follow --out
    if args.step == "run":
        run(args.out, args.specs, args.seed)
    elif args.step == "point":
        if len(args.specs) != 1 or args.epochs is None or args.accuracy is None:
            parser.error("point takes one MEMBER:RECIPE:LABEL, --epochs and --accuracy")
        point(args.out, args.specs[0], args.epochs, args.accuracy, args.source)
    elif args.step == "probe":
        probe(args.out, args.repeats)
    elif args.step == "build":
        build(args.out, args.cpu)
    elif args.step == "merge":
        merge(args.out, args.like, args.ratio, args.cpu)
    elif args.step == "table":
        table(args.out)
    else:
        plot(args.out, args.image)


if __name__ == "__main__":
    sys.exit(main())
