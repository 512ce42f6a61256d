"""One study, two `cifarctl tune` processes, as on two machines, through a real PostgreSQL server.

Starts a throw-away PostgreSQL server (initdb into a temporary folder, its own port, stopped at the end),
then runs two processes on one study named in it: the first starts the study (`tune MODEL --storage URL
--study NAME`), the second joins it by name alone (`tune --storage URL --study NAME`) with its own
CIFARCTL_HOME and study folder, as another machine would. Both train trials on a small generated dataset
(no download). Checks that both processes' trials are in the one study, numbered once each, and that the
joining process found the study's settings in the database. Needs PostgreSQL's server programs (initdb,
pg_ctl) and a PostgreSQL driver for SQLAlchemy (`pip install 'psycopg[binary]'`); not part of the test suite.

    python bench/tune_postgres.py [--trial-budget 4s] [--time-budget 30s]
"""

from __future__ import annotations

import argparse
import getpass
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NET = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.norm = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.head(torch.relu(self.norm(self.conv(x))).mean((2, 3)))
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def as_server_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its programs as the `postgres` user then."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


def start_server(folder: Path, port: int) -> None:
    folder.mkdir(parents=True)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    for program in ("initdb", "pg_ctl"):
        if shutil.which(program) is None:
            sys.exit(f"{program} not found: install PostgreSQL's server programs")
    subprocess.run(as_server_user(["initdb", "-D", str(folder / "db"), "-U", "tune", "--auth=trust"]), check=True,
                   capture_output=True)
    subprocess.run(as_server_user(["pg_ctl", "-D", str(folder / "db"), "-l", str(folder / "server.log"), "-o",
                                   f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "-w", "start"]),
                   check=True, capture_output=True)
    subprocess.run(as_server_user(["createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "tune", "studies"]),
                   check=True, capture_output=True)


def stop_server(folder: Path) -> None:
    subprocess.run(as_server_user(["pg_ctl", "-D", str(folder / "db"), "-m", "fast", "stop"]), capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trial-budget", default="4s")
    parser.add_argument("--time-budget", default="30s")
    args = parser.parse_args()
    from cifarctl.data.cifar10 import fake_cifar10, write_cache

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)
        port = free_port()
        start_server(root / "pg", port)
        url = f"postgresql://tune@127.0.0.1:{port}/studies"
        try:
            (root / "net.py").write_text(NET)
            homes = [root / "machine-a", root / "machine-b"]
            for home in homes:
                os.environ["CIFARCTL_HOME"] = str(home)
                write_cache(fake_cifar10(train=600, test=100, seed=1))
            common = ["--storage", url, "--study", "bench", "--offline", "--device", "cpu"]
            first = subprocess.Popen([sys.executable, "-m", "cifarctl", "tune", f"{root / 'net.py'}:Net",
                                      "--time-budget", args.time_budget, "--trial-budget", args.trial_budget,
                                      "--val-split", "100", "--out", str(root / "study-a"), *common],
                                     env={**os.environ, "CIFARCTL_HOME": str(homes[0])})
            deadline = time.monotonic() + 120  # the first process makes the study (after its lr range tests)
            while not (root / "study-a" / "study.json").is_file() and time.monotonic() < deadline:
                time.sleep(0.5)
            second = subprocess.run([sys.executable, "-m", "cifarctl", "tune", "--out", str(root / "study-b"), *common],
                                    env={**os.environ, "CIFARCTL_HOME": str(homes[1])})
            first.wait()
            report(url, first.returncode, second.returncode)
        finally:
            stop_server(root / "pg")


def report(url: str, first: int, second: int) -> None:
    import optuna

    study = optuna.load_study(study_name="bench", storage=url)
    trials = study.get_trials()
    pids = {t.user_attrs.get("pid") for t in trials}
    numbers = sorted(t.number for t in trials)
    print(f"user {getpass.getuser()}, PostgreSQL at {url}")
    print(f"exit codes: first {first}, second {second}; trials {len(trials)} "
          f"({', '.join(sorted({t.state.name for t in trials}))}) from {len(pids)} processes; numbers {numbers}")
    ok = first == 0 and second == 0 and len(pids) == 2 and numbers == list(range(len(trials)))
    print("both processes worked on one study" if ok else "FAILED: see above")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
