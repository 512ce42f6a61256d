"""Many seeds in one command: a group's statistics, its seeds equal to single runs, resume, compare, torchrun,
--jobs, and bad input in one line."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from scipy import stats
from typer.testing import CliRunner

from cifarctl.cli import app
from cifarctl.errors import UsageError
from cifarctl.progress import NullProgress
from cifarctl.run.config import TrainConfig
from cifarctl.run.group import GroupRecord, read_group, write_group
from cifarctl.stats import compare, summarize
from cifarctl.training import TrainingInterrupted, train
from cifarctl.training.seeds import parse_seeds, resume_group, train_group

from conftest import tiny_dataset, weights_digest

def seeds_cfg(**values: object) -> TrainConfig:
    """Quick seeds that differ: airbench94 at a quarter of its widths, 2 epochs of 4 steps on 200 training images,
    scored on 200 test images (a test accuracy in steps of 0.5%)."""
    return TrainConfig.for_model("airbench94_quarter", **{**dict(epochs=2, batch_size=50, device="cpu", amp=False,
                                                                 eval_batch_size=50, log_every=1), **values})


def data():
    return tiny_dataset(test=200)


def test_the_statistics_are_scipys() -> None:
    accuracies, seconds = [45.1, 44.6, 45.4, 46.0], [60.0, 62.0, 61.0, 63.0]
    summary = summarize(accuracies, seconds, target=45.0)
    values = np.array(accuracies)
    assert summary.n == 4 and summary.mean == pytest.approx(values.mean(), abs=1e-9)
    assert summary.std == pytest.approx(values.std(ddof=1), abs=1e-9)
    low, high = stats.t.interval(0.95, 3, loc=values.mean(), scale=stats.sem(values))
    assert summary.ci95 == (pytest.approx(low, abs=1e-9), pytest.approx(high, abs=1e-9))
    assert (summary.min, summary.max, summary.seconds_mean) == (44.6, 46.0, 61.5)
    assert summary.reached == 3
    assert summary.p_value == pytest.approx(stats.ttest_1samp(values, 45.0, alternative="greater").pvalue, abs=1e-9)
    one = summarize([90.0])
    assert one.std is None and one.ci95 is None and "n=1" in one.describe()


def test_compare_is_welchs_test() -> None:
    a, b = [90.1, 90.3, 89.9], [90.6, 90.9, 90.7, 91.0]
    result = compare(a, b, [100, 110, 90], [50, 60, 55, 55])
    welch = stats.ttest_ind(b, a, equal_var=False)
    assert result.difference == pytest.approx(np.mean(b) - np.mean(a), abs=1e-9)
    assert result.p_value == pytest.approx(welch.pvalue, abs=1e-9)
    interval = welch.confidence_interval(0.95)
    assert result.ci95 == (pytest.approx(interval.low, abs=1e-9), pytest.approx(interval.high, abs=1e-9))
    assert result.time_ratio == pytest.approx(55 / 100)
    assert result.sentence.startswith("B is better by 0.70 points, p = ")
    same = compare([90.0, 90.4, 90.2], [90.1, 90.3, 90.2])
    assert same.sentence.startswith("no difference shown at n=3")
    single = compare([90.0], [91.0])
    assert single.p_value is None and single.ci95 is None and "no difference can be shown" in single.sentence


@pytest.mark.parametrize("text, first, expected", [("3", 5, [5, 6, 7]), ("0,3,7", 0, [0, 3, 7]), (2, 0, [0, 1])])
def test_seeds_are_a_count_or_a_list(text, first, expected) -> None:
    assert parse_seeds(text, first) == expected


@pytest.mark.parametrize("text, message", [("0", "at least one seed"), ("1,1", "lists 1 twice"),
                                           ("x", "neither a count nor a list"), ("1,-2", "seeds of 0 or more")])
def test_bad_seeds_are_refused(text, message) -> None:
    with pytest.raises(UsageError, match=message):
        parse_seeds(text)


class StopInSeed(NullProgress):
    """Asks the group to stop once ``seed_label``'s training has advanced ``steps`` steps."""

    def __init__(self, stop: threading.Event, seed_label: str, steps: int) -> None:
        self.stop, self.seed_label, self.steps, self.seen, self.counting = stop, seed_label, steps, 0, False

    def start(self, description: str, total: float | None, unit: str = "") -> None:
        self.counting = description.startswith(self.seed_label) and unit == "steps"

    def advance(self, amount: float = 0, **info: object) -> None:
        if self.counting:
            self.seen += amount
            if self.seen >= self.steps:
                self.stop.set()


def test_a_group_summarises_its_seeds_each_the_single_run_of_its_seed(tmp_path: Path) -> None:
    cfg = seeds_cfg(save_every=1)
    done: list[int] = []
    from cifarctl.training.seeds import GroupHooks

    group = train_group(cfg, [0, 1, 2], data(), tmp_path / "group", target=10.0,
                        hooks=GroupHooks(seed_done=lambda result, i, n: done.append(result.seed)))
    assert done == [0, 1, 2] and group.state == "finished"
    accuracies = [r.test_accuracy for r in group.runs]
    assert len(set(accuracies)) > 1  # the seeds differ
    record = read_group(tmp_path / "group")
    assert record.state == "finished" and [r["seed"] for r in record.runs] == [0, 1, 2]
    values = np.array(accuracies)
    summary = record.summary
    assert summary["mean"] == pytest.approx(values.mean(), abs=1e-6)
    assert summary["std"] == pytest.approx(values.std(ddof=1), abs=1e-6)
    low, high = stats.t.interval(0.95, 2, loc=values.mean(), scale=stats.sem(values))
    assert summary["ci95"] == [pytest.approx(low, abs=1e-6), pytest.approx(high, abs=1e-6)]
    assert summary["p_value"] == pytest.approx(stats.ttest_1samp(values, 10.0, alternative="greater").pvalue,
                                               abs=1e-6)
    assert summary["reached"] == int((values >= 10.0).sum())
    # Seed 1 of the group is the single run --seed 1, to the last bit.
    single = train(dataclasses.replace(cfg, seed=1), data(), tmp_path / "single")
    assert weights_digest(tmp_path / "group" / "seed-1") == weights_digest(tmp_path / "single")
    assert single.test_accuracy == group.runs[1].test_accuracy


def test_a_group_stopped_in_its_second_seed_resumes_to_the_same_results(tmp_path: Path) -> None:
    cfg = seeds_cfg(save_every=1)
    whole = train_group(cfg, [0, 1, 2], data(), tmp_path / "whole")
    stop = threading.Event()
    from cifarctl.training.seeds import GroupHooks

    with pytest.raises(TrainingInterrupted):
        train_group(cfg, [0, 1, 2], data(), tmp_path / "cut", hooks=GroupHooks(progress=StopInSeed(stop, "seed 2/3", 2)),
                    stop=stop)
    record = read_group(tmp_path / "cut")
    assert record.state == "stopped" and [r["seed"] for r in record.runs] == [0]
    assert torch.load(tmp_path / "cut" / "seed-1" / "last.pt", weights_only=True)["global_step"] == 2
    resumed = resume_group(tmp_path / "cut", data())
    assert resumed.state == "finished"
    keep = ("seed", "test_accuracy", "test_loss", "epochs", "steps", "tta")
    assert [{k: getattr(r, k) for k in keep} for r in resumed.runs] == [{k: getattr(r, k) for k in keep}
                                                                         for r in whole.runs]
    for seed in (0, 1, 2):
        assert weights_digest(tmp_path / "cut" / f"seed-{seed}") == weights_digest(tmp_path / "whole" / f"seed-{seed}")
    differs = {"seconds_mean"}
    assert {k: v for k, v in resumed.summary.to_dict().items() if k not in differs} == \
        {k: v for k, v in whole.summary.to_dict().items() if k not in differs}
    again = resume_group(tmp_path / "cut", data())  # nothing left: the same group, no seed run again
    assert [r.seconds for r in again.runs] == [r.seconds for r in resumed.runs]


def _group(folder: Path, accuracies: list[float], seconds: list[float]) -> Path:
    runs = [{"seed": i, "test_accuracy": a, "test_loss": 1.0, "epochs": 1.0, "steps": 10, "seconds": s, "tta": 0,
             "run_dir": str(folder / f"seed-{i}")} for i, (a, s) in enumerate(zip(accuracies, seconds))]
    record = GroupRecord("resnet50", {"model": "resnet50"}, list(range(len(runs))), runs=runs, state="finished")
    record.summary = summarize(accuracies, seconds).to_dict()
    write_group(folder, record)
    return folder


def test_runs_compare_and_list_groups(home: Path, tmp_path: Path) -> None:
    a = _group(tmp_path / "a", [90.1, 90.3, 89.9], [100, 110, 90])
    b = _group(tmp_path / "b", [90.6, 90.9, 90.7, 91.0], [50, 60, 55, 55])
    runner = CliRunner()
    result = runner.invoke(app, ["runs", "compare", str(a), str(b), "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    welch = stats.ttest_ind([90.6, 90.9, 90.7, 91.0], [90.1, 90.3, 89.9], equal_var=False)
    assert shown["difference"] == pytest.approx(0.7, abs=1e-6) and shown["p_value"] == pytest.approx(welch.pvalue)
    assert shown["ci95"] == [pytest.approx(x) for x in welch.confidence_interval(0.95)]
    assert shown["time_ratio"] == pytest.approx(0.55)
    result = runner.invoke(app, ["runs", "compare", str(a), str(b)])
    assert result.exit_code == 0 and "B is better by 0.70 points" in result.output
    result = runner.invoke(app, ["runs", str(b), "--json"])
    assert result.exit_code == 0 and [r["seed"] for r in json.loads(result.stdout)["runs"]] == [0, 1, 2, 3]
    single = train(seeds_cfg(), data(), tmp_path / "single")
    result = runner.invoke(app, ["runs", "compare", str(tmp_path / "single"), str(b), "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["n_a"] == 1 and shown["p_value"] is None and shown["mean_a"] == single.test_accuracy
    for args in (["runs", "compare", str(a), str(tmp_path)], ["runs", "compare", str(a)]):
        refused = runner.invoke(app, args)
        assert refused.exit_code == 2 and refused.output.count("error:") == 1 and "Traceback" not in refused.output


def test_bad_group_input_is_one_line(cached, tmp_path: Path) -> None:
    runner = CliRunner()
    for args, message in ((["--seeds", "0"], "at least one seed"), (["--seeds", "1,1"], "lists 1 twice"),
                          (["--seeds", "2", "--jobs", "3"], "more than the 2 seeds"),
                          (["--jobs", "2"], "--jobs trains seeds"),
                          (["--seeds", "2", "--resume"], "--seeds starts a group")):
        result = runner.invoke(app, ["train", "resnet50", *args, "--offline", "--device", "cpu"])
        assert result.exit_code == 2 and message in result.output and result.output.count("error:") == 1, args


def test_a_group_from_the_command_line(cached, tmp_path: Path) -> None:
    out = tmp_path / "group"
    args = ["train", "airbench94_quarter", "--seeds", "2", "--seed", "4", "--epochs", "2", "--batch-size", "50",
            "--device", "cpu", "--no-amp", "--offline", "--out", str(out), "--target", "5"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert [r["seed"] for r in shown["runs"]] == [4, 5] and shown["summary"]["n"] == 2
    assert shown["summary"]["target"] == 5.0 and set(shown["summary"]) >= {"mean", "std", "ci95", "min", "max",
                                                                           "seconds_mean", "reached", "p_value"}
    assert "seed 2/2 (5)" in result.output
    listed = CliRunner().invoke(app, ["runs", "--json"])
    groups = [r for r in json.loads(listed.stdout) if r["kind"] == "group"]
    assert [g["path"] for g in groups] == [str(out)] and groups[0]["n"] == 2 and groups[0]["state"] == "finished"
    again = CliRunner().invoke(app, ["train", "airbench94_quarter", "--resume", str(out), "--offline"])
    assert again.exit_code == 0 and "finished" in again.output


def _ranks_main(rank: int, world: int, port: int, out: str) -> None:
    """What `torchrun --nproc-per-node 2 -m cifarctl train resnet50 --seeds 2` starts on each rank."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    train_group(seeds_cfg(), [0, 1], data(), Path(out))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(sys.platform == "win32", reason="gloo on POSIX")
def test_under_torchrun_the_ranks_split_the_seeds(tmp_path: Path) -> None:
    mp.spawn(_ranks_main, args=(2, _free_port(), str(tmp_path / "group")), nprocs=2, join=True)
    record = read_group(tmp_path / "group")
    assert record.state == "finished" and [r["seed"] for r in record.runs] == [0, 1]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for seed in (0, 1):
            train(seeds_cfg(seed=seed), data(), tmp_path / f"single-{seed}")
            state = torch.load(tmp_path / "group" / f"seed-{seed}" / "last.pt", weights_only=True)
            assert state["world_size"] == 1  # trained alone: no gradient exchange
            assert weights_digest(tmp_path / "group" / f"seed-{seed}") == weights_digest(tmp_path / f"single-{seed}")
    finally:
        torch.set_num_threads(threads)


def test_jobs_train_seeds_side_by_side(tmp_path: Path) -> None:
    group = train_group(seeds_cfg(), [0, 1], data(), tmp_path / "group", jobs=2)
    assert group.state == "finished" and [r.seed for r in group.runs] == [0, 1]
    assert read_group(tmp_path / "group").jobs == 2
    assert all((tmp_path / "group" / f"seed-{s}" / "last.pt").is_file() for s in (0, 1))
