"""Real processes: SIGKILL then --resume ends bit-for-bit where an uninterrupted run does; SIGINT saves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ARGS = ["train", "resnet50", "--epochs", "3", "--batch-size", "50", "--device", "cpu", "--offline",
        "--no-eval", "--seed", "3"]
# airbench94's recipe on tiny data: lookahead (EMA) state, whitening, the triangle schedule and
# alternating flips must all come back from the checkpoint.
AIRBENCH = ["train", "airbench94", "--epochs", "3", "--batch-size", "50", "--device", "cpu", "--offline",
            "--no-eval", "--seed", "3"]


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cifarctl", *args]


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "CIFARCTL_HOME": str(home), "OMP_NUM_THREADS": "1"}


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("args", [ARGS, AIRBENCH], ids=["resnet50", "airbench94"])
def test_sigkill_then_resume_is_bit_identical(cached, home: Path, tmp_path: Path, args: list[str]) -> None:
    env = _env(home)
    subprocess.run(_cmd(*args, "--out", str(tmp_path / "straight")), env=env, check=True, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(*args, "--out", str(killed), "--save-every", "1"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(killed / "last.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = torch.load(killed / "last.pt", weights_only=True)["global_step"]
    assert 1 <= step < 12  # killed mid-run, with a valid checkpoint on disk

    resumed = subprocess.run(_cmd("train", args[1], "--resume", str(killed), "--offline"), env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(killed / "last.pt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 12
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for i, state in a["optimizer"]["state"].items():
        assert all(torch.equal(state[k], b["optimizer"]["state"][i][k]) for k in state if torch.is_tensor(state[k]))
    if a["lookahead"] is not None:
        assert all(torch.equal(v, b["lookahead"]["average"][k]) for k, v in a["lookahead"]["average"].items())


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_and_prints_the_resume_command(cached, home: Path, tmp_path: Path, sig, code) -> None:
    run = tmp_path / "run"
    proc = subprocess.Popen(_cmd(*ARGS, "--out", str(run), "--save-every", "1000"), env=_env(home),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(run / "config.json", proc)
    time.sleep(0.5)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert sig.name in err and f"--resume {run}" in err and "Traceback" not in err
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["global_step"] >= 1 and state["step_in_epoch"] == state["global_step"] % 4
