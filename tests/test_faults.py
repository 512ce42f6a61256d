"""Faults a user meets: a full disk, two processes on one run or one cache, a killed import, a broken
home, a damaged run folder. Each ends in one line on stderr and a non-zero exit, and nothing that was
there before is lost: every checkpoint still loads and evaluates to the same accuracy."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import torch
from typer.testing import CliRunner

from cifarctl.cli import app
from cifarctl.data.cifar10 import cache_info, load_cifar10, write_cache
from cifarctl.engine import evaluate, load_checkpoint
from cifarctl.locks import exclusive

from conftest import tiny_dataset

SMALL_RUN = ["--device", "cpu", "--offline", "--batch-size", "50", "--no-amp"]


def cli(*args: str, home: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CIFARCTL_HOME": str(home)}
    env.pop("CIFARCTL_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "cifarctl", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert lines and lines[-1].startswith("error:"), stderr
    return lines[-1]


def accuracy(run: Path, file: str = "last.pt") -> float:
    return evaluate("airbench94", run / file, tiny_dataset(), device="cpu").accuracy


# -- a full disk -------------------------------------------------------------------------------

@contextlib.contextmanager
def small_disk(folder: Path, megabytes: int) -> Iterator[Path]:
    """A real tmpfs of ``megabytes`` at ``folder`` (root only), unmounted afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; test_full_disk_injected covers the write path")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); test_full_disk_injected covers the write path")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _fill(folder: Path, leave_bytes: int) -> Path:
    """Fill ``folder``'s file system until about ``leave_bytes`` are free."""
    filler = folder / "filler"
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(free - leave_bytes, 0))
    return filler


def test_full_disk_on_a_real_small_file_system(cached, tmp_path: Path) -> None:
    home = Path(os.environ["CIFARCTL_HOME"])
    with small_disk(tmp_path / "disk", 64) as disk:
        run = disk / "run"
        first = cli("train", "airbench94", "--out", str(run), "--max-steps", "2", "--no-eval", *SMALL_RUN, home=home)
        assert first.returncode == 0, first.stderr
        before = accuracy(run)
        filler = _fill(disk, leave_bytes=2 << 20)           # 2 MB left: the next checkpoint (~24 MB) cannot fit
        failed = cli("train", "airbench94", "--resume", str(run), "--max-steps", "4", "--device", "cpu",
                     "--offline", home=home)
        assert failed.returncode != 0
        line = one_line_error(failed.stderr)
        assert f"cannot write the checkpoint {run / 'last.pt'}: No space left on device (28)" in line
        assert "(step 2) is intact" in line and "--resume" in line
        assert sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp")) == []  # no temporary left
        assert load_checkpoint(run / "last.pt")["global_step"] == 2 and accuracy(run) == before
        filler.unlink()                                     # space freed: the run continues from step 2
        again = cli("train", "airbench94", "--resume", str(run), "--max-steps", "4", "--device", "cpu",
                    "--offline", home=home)
        assert again.returncode == 0, again.stderr
        assert load_checkpoint(run / "last.pt")["global_step"] == 4


def test_full_disk_injected(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The same path with the system's ENOSPC raised by the write (for machines that cannot mount)."""
    from cifarctl.engine import TrainConfig, resume, train
    from cifarctl.errors import FileSystemError

    checkpoint_module = __import__("importlib").import_module("cifarctl.run.checkpoint")
    data, run = tiny_dataset(), tmp_path / "run"
    cfg = TrainConfig.for_model("airbench94", batch_size=50, device="cpu", amp=False, max_steps=2, eval=False)
    train(cfg, data, run)
    before = accuracy(run)
    real_save = torch.save

    def full(obj: object, fh: object, *args: object, **kwargs: object) -> None:
        real_save({"partial": torch.zeros(10)}, fh)        # some bytes reach the file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", full)
    with pytest.raises(FileSystemError, match=r"No space left on device \(28\).*\(step 2\) is intact") as info:
        resume(run, data, {"max_steps": 4})
    assert info.value.errno == errno.ENOSPC and "\n" not in str(info.value)
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    assert load_checkpoint(run / "last.pt")["global_step"] == 2 and accuracy(run) == before
    assert resume(run, data, {"max_steps": 4}).global_step == 4


def test_torch_writer_errors_that_hide_a_full_disk_are_recognised(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    checkpoint_module = __import__("importlib").import_module("cifarctl.run.checkpoint")
    from cifarctl.errors import FileSystemError

    def hidden(obj: object, fh: object, *args: object, **kwargs: object) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(checkpoint_module.torch, "save", hidden)
    monkeypatch.setattr(checkpoint_module.shutil, "disk_usage", lambda p: type("Usage", (), {"free": 1000})())
    with pytest.raises(FileSystemError, match="No space left on device"):
        checkpoint_module.save_checkpoint(tmp_path / "x.pt", {"a": torch.zeros(2)})
    monkeypatch.setattr(checkpoint_module.shutil, "disk_usage", lambda p: type("Usage", (), {"free": 1 << 40})())
    with pytest.raises(RuntimeError, match="unexpected pos"):  # with room on the disk it is not ENOSPC
        checkpoint_module.save_checkpoint(tmp_path / "x.pt", {"a": torch.zeros(2)})


# -- one writer per run ------------------------------------------------------------------------

def _start_training(run: Path, home: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "CIFARCTL_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-m", "cifarctl", "train", "resnet50", "--data", "fake", "--out",
                             str(run), "--device", "cpu", "--epochs", "5"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_lock(run: Path, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lock = run / ".lock"
        if lock.exists() and lock.read_text().startswith(str(proc.pid)):
            return
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.1)
    raise AssertionError("the first process never took the run's lock")


def test_a_second_writer_is_refused_and_a_killed_one_leaves_no_lock(home: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = _start_training(run, home)
    try:
        _wait_for_lock(run, first)
        started = time.monotonic()
        second = cli("train", "resnet50", "--data", "fake", "--out", str(run), "--device", "cpu", home=home)
        line = one_line_error(second.stderr)
        assert second.returncode != 0 and f"process {first.pid}" in line and "is in use" in line
        listing = cli("runs", "--json", home=home)            # a reader never waits for the lock
        assert listing.returncode == 0 and time.monotonic() - started < 60
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    with exclusive(run, lambda who: pytest.fail(f"a SIGKILLed holder left its lock: {who}")):
        pass                                                 # the kernel released it with the process


def test_resume_takes_the_same_lock(tmp_path: Path) -> None:
    from cifarctl.engine import TrainConfig, resume, train
    from cifarctl.errors import RunInUse

    data, run = tiny_dataset(), tmp_path / "run"
    train(TrainConfig(model="resnet50", batch_size=50, device="cpu", amp=False, max_steps=1, eval=False), data, run)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from cifarctl.locks import exclusive\n"
        f"with exclusive(Path({str(run)!r}), lambda who: sys.exit(3)):\n"
        "    print('held', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RunInUse, match=f"process {holder.pid}"):
            resume(run, data, {"max_steps": 2})
    finally:
        holder.kill()
        holder.wait()
    assert resume(run, data, {"max_steps": 2}).global_step == 2


def test_a_file_system_without_locks_trains_unlocked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import cifarctl.locks as locks

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(locks.fcntl, "flock", no_locks)
    entered = []
    with exclusive(tmp_path / "run", lambda who: pytest.fail("refused")):
        entered.append(True)
    assert entered == [True]


def test_only_rank_zero_takes_the_lock(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from cifarctl.run.folder import run_lock

    monkeypatch.setenv("RANK", "1")
    with run_lock(tmp_path / "run"):
        pass
    assert not (tmp_path / "run").exists()


# -- one writer per cache, and a killed import ------------------------------------------------

def _image_tree(root: Path, per_class: int) -> Path:
    from PIL import Image

    from cifarctl.data.cifar10 import CLASSES
    from conftest import make_images

    images, _ = make_images(per_class * 10 + 100, seed=7)
    for i, image in enumerate(images):   # every class in both splits: 10 test images each, then per_class train
        split = "test" if i < 100 else "train"
        folder = root / split / CLASSES[i % 10]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}.png")
    return root


def test_a_second_download_waits_for_the_first(home: Path, tmp_path: Path) -> None:
    tree = _image_tree(tmp_path / "images", per_class=4)
    cache_root = home / "cache"
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with exclusive(cache_root, lambda who: None, wait=True):
            held.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    env = {**os.environ, "CIFARCTL_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "cifarctl", "download", "--from", str(tree)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        waiting = ""
        while "waiting for" not in waiting:
            line = proc.stderr.readline()
            assert line, "download ended without waiting for the cache's lock"
            waiting += line
        assert f"process {os.getpid()}" in waiting and "CIFAR-10 cache" in waiting
    finally:
        release.set()
        holder.join()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    info = cache_info(home / "cache" / "cifar10")
    assert info is not None and (info.train, info.test) == (40, 100)
    load_cifar10(home / "cache" / "cifar10", verify=True)


def test_a_killed_import_leaves_the_previous_cache(home: Path, tmp_path: Path) -> None:
    previous = tiny_dataset()
    write_cache(previous)
    cache = home / "cache" / "cifar10"
    tree = _image_tree(tmp_path / "images", per_class=300)   # 3,100 PNGs: long enough to be killed mid-way
    env = {**os.environ, "CIFARCTL_HOME": str(home)}
    for kill_when in ("reading", "building"):
        proc = subprocess.Popen([sys.executable, "-m", "cifarctl", "download", "--from", str(tree), "--force"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            staging = list(cache.parent.glob(".cifar10-building-*"))
            if kill_when == "building" and staging:
                break
            if kill_when == "reading" and (cache.parent / ".lock").exists() and \
                    (cache.parent / ".lock").read_text().startswith(str(proc.pid)):
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kept = load_cifar10(cache, verify=True)              # the previous cache, whole (or, if the import had
        assert len(kept.train_labels) in (len(previous.train_labels), 3000)  # finished, the new one)
    done = cli("download", "--from", str(tree), "--force", home=home)
    assert done.returncode == 0, done.stderr
    assert len(load_cifar10(cache, verify=True).train_labels) == 3000
    assert list(cache.parent.glob(".cifar10-building-*")) == [] and list(cache.parent.glob(".cifar10-old-*")) == []


def test_a_cache_left_aside_between_the_two_renames_is_put_back(home: Path) -> None:
    write_cache(tiny_dataset())
    cache = home / "cache" / "cifar10"
    cache.rename(cache.with_name(".cifar10-old-.cifar10-building-abc"))  # killed after the first rename
    assert not cache.exists()
    info = cache_info(cache)
    assert info is not None and info.train == 200 and cache.is_dir()
    load_cifar10(cache, verify=True)


# -- a broken home, an OSError anywhere -------------------------------------------------------

def test_a_home_that_is_a_file_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    not_a_folder = tmp_path / "home"
    not_a_folder.write_text("oops")
    monkeypatch.setenv("CIFARCTL_HOME", str(not_a_folder))
    for command in (["train", "resnet50", "--data", "fake", "--max-steps", "1", "--device", "cpu"], ["runs"],
                    ["download", "--from", str(tmp_path)]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2, (command, result.output)
        assert "is a file, not a folder" in result.output and "Traceback" not in result.output


def test_any_os_error_is_one_line_with_the_path_and_reason(cached, tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    result = cli("train", "resnet50", "--out", str(a_file / "run"), "--max-steps", "1", *SMALL_RUN,
                 home=Path(os.environ["CIFARCTL_HOME"]))
    assert result.returncode == 1
    line = one_line_error(result.stderr)
    assert str(a_file) in line and "Not a directory (20)" in line
    debug = subprocess.run([sys.executable, "-m", "cifarctl", "train", "resnet50", "--out", str(a_file / "run"),
                            "--max-steps", "1", *SMALL_RUN], capture_output=True, text=True,
                           env={**os.environ, "CIFARCTL_DEBUG": "1"})
    assert "Traceback" in debug.stderr                                  # CIFARCTL_DEBUG=1 keeps the traceback


# -- a damaged run folder ----------------------------------------------------------------------

def invoke(*args: str) -> object:
    """The CLI in this process (the damaged-folder cases need no real second process)."""
    return CliRunner().invoke(app, list(args))


def test_a_damaged_config_marks_the_run_and_resume_rewrites_it(cached, tmp_path: Path) -> None:
    import shutil

    good = tmp_path / "good"
    made = invoke("train", "airbench94", "--out", str(good), "--max-steps", "1", "--no-eval", *SMALL_RUN)
    assert made.exit_code == 0, made.output
    damages = {"truncated": lambda b: b[:40], "not-json": lambda b: b"[1, 2", "not-utf8": lambda b: b"\xff\xfe\x00x"}
    for name, damage in damages.items():
        shutil.copytree(good, tmp_path / name)
        (tmp_path / name / "config.json").write_bytes(damage((good / "config.json").read_bytes()))
        from cifarctl.run.index import register_run

        register_run(tmp_path / name)
    listing = json.loads(invoke("runs", "--json").stdout)
    marks = {Path(r["path"]).name: r["damaged"] for r in listing}
    assert marks == {"good": [], **{name: ["config.json"] for name in damages}}
    table = invoke("runs")
    assert table.exit_code == 0 and "damaged" in table.output and "does not stop a run" in table.output
    for name in damages:
        again = invoke("train", "airbench94", "--resume", str(tmp_path / name), "--max-steps", "2", "--device",
                       "cpu", "--offline")
        assert again.exit_code == 0, again.output
        config = json.loads((tmp_path / name / "config.json").read_text())  # written again from the checkpoint
        assert config["model"] == "airbench94" and config["max_steps"] == 2


def test_a_damaged_metrics_log_marks_the_run_and_resume_drops_the_bad_lines(cached, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert invoke("train", "airbench94", "--out", str(run), "--max-steps", "2", "--no-eval", *SMALL_RUN).exit_code == 0
    metrics = run / "metrics.jsonl"
    lines = metrics.read_bytes().splitlines(keepends=True)
    metrics.write_bytes(lines[0] + b"\xff\xfe not json\n" + b"".join(lines[1:]) + b'{"type": "step", "glo')
    listing = json.loads(invoke("runs", "--json").stdout)
    assert listing[0]["damaged"] == ["metrics.jsonl"]
    again = invoke("train", "airbench94", "--resume", str(run), "--max-steps", "3", "--device", "cpu", "--offline")
    assert again.exit_code == 0, again.output
    records = [json.loads(line) for line in metrics.read_text().splitlines()]  # every line reads again
    assert records and max(r["global_step"] for r in records) == 3
    assert json.loads(invoke("runs", "--json").stdout)[0]["damaged"] == []


@pytest.mark.parametrize("failing, names", [("cifarctl.run.log", "metrics.jsonl"), ("cifarctl.run.folder", "config.json")])
def test_full_disk_at_the_start_of_a_resume_names_the_file_and_what_is_kept(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, failing: str, names: str) -> None:
    """The first writes of a resume (the log trimmed to the checkpoint, config.json) fail in one line, and lose nothing."""
    from cifarctl.engine import TrainConfig, resume, train
    from cifarctl.errors import FileSystemError

    data, run = tiny_dataset(), tmp_path / "run"
    train(TrainConfig.for_model("resnet50", batch_size=50, device="cpu", amp=False, max_steps=2, eval=False), data, run)
    before = (run / "last.pt").read_bytes()

    def full(path: object, text: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(f"{failing}.write_text", full)
    with pytest.raises(FileSystemError) as info:
        resume(run, data, {"max_steps": 4})
    message = str(info.value)
    assert f"cannot write {run / names}: No space left on device (28)" in message and "\n" not in message
    assert f"{run / 'last.pt'} (step 2) is intact" in message and f"--resume {run}" in message
    assert info.value.errno == errno.ENOSPC and (run / "last.pt").read_bytes() == before
    monkeypatch.undo()
    assert resume(run, data, {"max_steps": 4}).global_step == 4
