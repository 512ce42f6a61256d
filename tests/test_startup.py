"""The command line answers help and completion without importing torch or Optuna (timings: bench/startup.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import atexit, os, sys
atexit.register(lambda: os.write(2, b"\\nTORCH-IMPORTED\\n" if "torch" in sys.modules or "optuna" in sys.modules
                                   else b"\\nNO-TORCH\\n"))
sys.argv = ["cifarctl", *sys.argv[1:]]
from cifarctl.cli import app
app()
"""

COMMANDS = ["download", "inspect", "train", "evaluate", "predict", "export", "runs", "models", "tune"]


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args", [["--help"], *[[c, "--help"] for c in COMMANDS]])
def test_help_does_not_import_torch(args: list[str]) -> None:
    done = _run(args)
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout and "NO-TORCH" in done.stderr


@pytest.mark.parametrize("words, cword, expected", [("cifarctl tr", "1", "train"),
                                                    ("cifarctl inspect --ba", "2", "--batch")])
def test_completion_is_on_and_does_not_import_torch(words: str, cword: str, expected: str) -> None:
    # What bash's completion function runs on <TAB> (Click's protocol; `--show-completion` prints it).
    done = _run([], {"_CIFARCTL_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": cword})
    assert expected in done.stdout.split() and "NO-TORCH" in done.stderr


def test_install_completion_is_offered() -> None:
    done = _run(["--help"])
    assert "--install-completion" in done.stdout and "--show-completion" in done.stdout


@pytest.mark.parametrize("spec, code", [("vgg16", 0), ("fixtures/seed_resnet.py:ResNet50_layer4", 1), ("vgg61", 2)])
def test_quick_exit_keeps_the_output_and_the_exit_code(spec: str, code: int) -> None:
    # Read-only commands end the process without torch's slow teardown: nothing may be lost.
    here = os.path.dirname(__file__)
    model = os.path.join(here, spec) if ".py:" in spec else spec
    done = subprocess.run([sys.executable, "-m", "cifarctl", "inspect", model, "--json"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == code, done.stderr
    if code == 2:
        assert done.stderr.startswith("error: unknown model 'vgg61'") and not done.stdout
    else:
        report = json.loads(done.stdout)
        assert report["ok"] is (code == 0) and report["total_params"] > 0
