"""Many seeds in one command: a group's statistics, its seeds equal to single runs, resume, compare, torchrun,
--jobs, and bad input in one line."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
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
from cifarctl.errors import CheckpointError, UsageError
from cifarctl.progress import NullProgress
from cifarctl.run.config import TrainConfig
from cifarctl.run.group import GroupRecord, read_group, write_group
from cifarctl.stats import compare, summarize
from cifarctl.training import TrainingInterrupted, train
from cifarctl.groups import parse_seeds, resume_group, train_group

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
    from cifarctl.groups import GroupHooks

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
    from cifarctl.groups import GroupHooks

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
    values = np.array([r["test_accuracy"] for r in shown["runs"]])
    summary = shown["summary"]
    assert summary["mean"] == pytest.approx(values.mean()) and summary["target"] == 5.0
    assert (summary["min"], summary["max"]) == (values.min(), values.max())
    assert summary["reached"] == int((values >= 5.0).sum())
    assert summary["seconds_mean"] == pytest.approx(np.mean([r["seconds"] for r in shown["runs"]]))
    if values.std() > 0:
        assert summary["std"] == pytest.approx(values.std(ddof=1))
        assert summary["p_value"] == pytest.approx(stats.ttest_1samp(values, 5.0, alternative="greater").pvalue)
    else:
        assert summary["std"] == 0.0 and summary["ci95"] is None and summary["p_value"] is None
    assert "seed 2/2 (5)" in result.output
    listed = CliRunner().invoke(app, ["runs", "--json"])
    groups = [r for r in json.loads(listed.stdout) if r["kind"] == "group"]
    assert [g["path"] for g in groups] == [str(out)] and groups[0]["n"] == 2 and groups[0]["state"] == "finished"
    again = CliRunner().invoke(app, ["train", "airbench94_quarter", "--resume", str(out), "--offline", "--json"])
    assert again.exit_code == 0, again.output
    resumed = json.loads(again.stdout)
    assert resumed["state"] == "finished" and resumed["runs"] == shown["runs"]  # nothing trained again
    assert "seed 1/2 (4):" not in again.output and "2 of 2 seeds done" in again.output


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


def test_jobs_train_each_seed_as_its_single_run_on_the_commands_dataset(tmp_path: Path) -> None:
    loads: list[int] = []

    def load():  # what the command loaded with its flags: called once, here, never in a job
        loads.append(os.getpid())
        return data()

    group = train_group(seeds_cfg(), [0, 1], load, tmp_path / "group", jobs=2)
    assert group.state == "finished" and [r.seed for r in group.runs] == [0, 1]
    assert loads == [os.getpid()] and read_group(tmp_path / "group").jobs == 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # each of the two jobs had one of the two cores
    try:
        for seed in (0, 1):
            single = train(seeds_cfg(seed=seed), data(), tmp_path / f"single-{seed}")
            assert weights_digest(tmp_path / "group" / f"seed-{seed}") == weights_digest(tmp_path / f"single-{seed}")
            assert group.runs[seed].test_accuracy == single.test_accuracy
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("extra", [[], ["--jobs", "2"]])
def test_a_group_that_cannot_load_its_data_leaves_nothing_behind(home: Path, tmp_path: Path, extra) -> None:
    out = tmp_path / "group"
    result = CliRunner().invoke(app, ["train", "airbench94_quarter", "--seeds", "2", *extra, "--epochs", "1",
                                      "--device", "cpu", "--offline", "--out", str(out)])
    assert result.exit_code != 0 and "--offline is set" in result.output and result.output.count("error:") == 1
    assert "Traceback" not in result.output and "download" not in result.output.split("--offline")[0]
    assert not out.exists()
    listed = CliRunner().invoke(app, ["runs", "--json"])
    assert json.loads(listed.stdout) == []


def _stopped_group(tmp_path: Path, **values: object) -> Path:
    """A group of seeds 0, 1 and 2 stopped two steps into its second seed."""
    stop = threading.Event()
    from cifarctl.groups import GroupHooks

    with pytest.raises(TrainingInterrupted):
        train_group(seeds_cfg(save_every=1, **values), [0, 1, 2], data(), tmp_path / "cut",
                    hooks=GroupHooks(progress=StopInSeed(stop, "seed 2/3", 2)), stop=stop)
    return tmp_path / "cut"


def test_a_group_resumes_with_the_overrides_a_run_resumes_with(cached, tmp_path: Path) -> None:
    group = _stopped_group(tmp_path, data="cifar10")
    runner = CliRunner()
    refused = runner.invoke(app, ["train", "airbench94_quarter", "--resume", str(group), "--device", "cuda",
                                  "--offline"])
    assert refused.exit_code != 0 and refused.output.count("error:") == 1 and "cuda" in refused.output.lower()
    assert "Traceback" not in refused.output
    assert read_group(group).runs[0]["seed"] == 0 and len(read_group(group).runs) == 1  # nothing trained
    refused = runner.invoke(app, ["train", "airbench94_quarter", "--resume", str(group), "--lr", "0.5", "--offline"])
    assert refused.exit_code == 2 and "--lr cannot change" in refused.output and refused.output.count("error:") == 1
    refused = runner.invoke(app, ["train", "airbench94_quarter", "--resume", str(group), "--seeds", "4", "--offline"])
    assert refused.exit_code == 2 and "drop --seeds" in refused.output
    # --epochs 3: every seed goes on to 3 epochs, the finished seed 0 too, as a finished run would
    done = runner.invoke(app, ["train", "airbench94_quarter", "--resume", str(group), "--epochs", "3", "--device",
                               "cpu", "--offline", "--json"])
    assert done.exit_code == 0, done.output
    shown = json.loads(done.stdout)
    assert shown["state"] == "finished" and [r["epochs"] for r in shown["runs"]] == [3.0, 3.0, 3.0]
    assert read_group(group).config["epochs"] == 3
    for seed in (0, 1, 2):
        state = torch.load(group / f"seed-{seed}" / "last.pt", weights_only=True)
        assert state["config"]["epochs"] == 3 and state["config"]["device"] == "cpu"


def test_a_seed_folder_of_other_settings_is_refused_by_name(tmp_path: Path) -> None:
    group = _stopped_group(tmp_path)
    shutil.rmtree(group / "seed-1")
    train(seeds_cfg(seed=1, save_every=1, label_smoothing=0.3), data(), group / "seed-1")
    with pytest.raises(CheckpointError, match=r"seed-1 is not a seed of this group: it was trained with "
                                              r"label_smoothing=0.3 \(the group's: 0.2\)"):
        resume_group(group, data())
    assert len(read_group(group).runs) == 1  # seed 0's, as before


def test_two_resumes_of_one_group_one_trains_one_refuses(cached, tmp_path: Path) -> None:
    from cifarctl.run.folder import run_lock

    group = _stopped_group(tmp_path, data="cifar10")
    with run_lock(group, writer=True):  # another `--resume GROUP` is training it
        refused = CliRunner().invoke(app, ["train", "airbench94_quarter", "--resume", str(group), "--offline"])
    assert refused.exit_code != 0 and refused.output.count("error:") == 1 and "in use" in refused.output
    assert len(read_group(group).runs) == 1
    done = CliRunner().invoke(app, ["train", "airbench94_quarter", "--resume", str(group), "--offline", "--json"])
    assert done.exit_code == 0 and json.loads(done.stdout)["state"] == "finished"


def test_a_group_without_spread_claims_no_interval_and_no_test(tmp_path: Path) -> None:
    alike = summarize([84.0, 84.0, 84.0], [10.0, 11.0, 12.0], target=83.0)
    assert alike.std == 0.0 and alike.ci95 is None and alike.p_value is None and alike.reached == 3
    assert "no spread" in alike.describe() and "n=3" in alike.describe()
    assert "no spread: no test" in alike.describe_target() and "one seed" not in alike.describe_target()
    both = compare([84.0, 84.0, 84.0], [85.0, 85.0, 85.0])
    assert both.p_value is None and both.ci95 is None and both.difference == pytest.approx(1.0)
    assert "neither group's seeds vary" in both.sentence and "one seed" not in both.sentence
    one_varies = compare([84.0, 84.0, 84.0], [85.0, 85.5, 84.5])
    assert one_varies.p_value == pytest.approx(stats.ttest_ind([85.0, 85.5, 84.5], [84.0] * 3, equal_var=False).pvalue)
    a = _group(tmp_path / "a", [84.0, 84.0, 84.0], [10, 10, 10])
    b = _group(tmp_path / "b", [85.0, 85.0, 85.0], [10, 10, 10])
    shown = CliRunner().invoke(app, ["runs", "compare", str(a), str(b), "--json"])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["p_value"] is None
    assert json.loads(shown.stdout)["ci95"] is None
    listed = CliRunner().invoke(app, ["runs", str(a), "--json"])
    assert json.loads(listed.stdout)["summary"]["ci95"] is None and json.loads(listed.stdout)["summary"]["std"] == 0.0


def test_a_damaged_state_is_refused_on_read(tmp_path: Path) -> None:
    folder = _group(tmp_path / "g", [84.0, 84.5], [10, 10])
    text = (folder / "summary.json").read_text().replace('"finished"', '"half-done"')
    (folder / "summary.json").write_text(text)
    with pytest.raises(CheckpointError, match="damaged.*half-done"):
        read_group(folder)
