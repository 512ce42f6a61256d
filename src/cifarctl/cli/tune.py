"""`cifarctl tune`: find a recipe for a model in the time given, judged on held-out training images."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from cifarctl.cli import process
from cifarctl.cli.options import ConfigFile, Device, Json, ModelOrConfig, ModelKwargs, Offline, OutDir, Verify
from cifarctl.cli.render import err_console, handle_errors

WORKER_THREADS = "CIFARCTL_TUNE_THREADS"  # a --jobs worker's share of the cores, set by the process that starts it


@handle_errors
def tune(
    model: ModelOrConfig = None,
    time_budget: Annotated[Optional[str], typer.Option("--time-budget", help="How long the search may take (30m, 2h): trials start while a whole one still fits.")] = None,
    trial_budget: Annotated[Optional[str], typer.Option("--trial-budget", help="Each trial's time budget, start-up to result (default 2m): train --time-budget's.")] = None,
    recipe: Annotated[Optional[str], typer.Option("--recipe", help="The recipe trials start from (default: MODEL's; `cifarctl models`).")] = None,
    config: ConfigFile = None,
    val_split: Annotated[Optional[int], typer.Option("--val-split", min=1, help="Training images held out to judge every trial on (stratified; default 5000); the test set is never read.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Draws the held-out images, seeds every trial and the search (default 0): the same command suggests the same trials.")] = None,
    out: OutDir = None,
    warm_start: Annotated[Optional[Path], typer.Option("--warm-start", help="Start from an earlier study's best three configurations (its folder), after the default and the built-in nets' recipes.")] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Go on with the study in this folder (after Ctrl-C, a kill, or to add time with --time-budget).")] = None,
    jobs: Annotated[int, typer.Option("--jobs", min=1, help="Trials at once on this machine, in processes that share the study (its journal file) and divide the cores.")] = 1,
    storage: Annotated[Optional[str], typer.Option("--storage", help="Keep the study in a database (postgresql://user:pass@host/db) so that cifarctl tune processes on any machines share it.")] = None,
    study: Annotated[Optional[str], typer.Option("--study", help="The study's name in --storage (default: the folder's name); with no MODEL, join it.")] = None,
    confirm: Annotated[int, typer.Option("--confirm", min=0, help="Then train the best recipe and the default N seeds each on all the training images, and compare them on the test set.")] = 0,
    trial: Annotated[Optional[int], typer.Option("--trial", help="With --resume: write trial N's recipe as a config file (to --out, default STUDY/trial-N.toml) and stop.")] = None,
    device: Device = None,
    model_kwargs: ModelKwargs = None,
    data: Annotated[Optional[str], typer.Option("--data", help="cifar10 (the cached dataset, the default) or fake (random images, for a dry run).")] = None,
    offline: Offline = False,
    verify: Verify = False,
    json_output: Json = False,
    worker: Annotated[bool, typer.Option("--worker", hidden=True)] = False,
) -> None:
    """Search a recipe for MODEL (yours too: path/to/file.py:ClassName) with Optuna in --time-budget.

    First a short lr range test for each optimizer bounds the lr; then trials, each an ordinary `train`
    with --trial-budget as its time budget, on the training images less --val-split held out, judged on
    those (the test set is never read). Optuna's TPE chooses each trial's optimizer (SGD, Adam, Muon), lr,
    batch size, weight decay, label smoothing, momentum, warm-up, the classifier's lr, lookahead, flip,
    crop and TTA level; each configuration runs whole at a ninth and a third of the trial budget first,
    and only the best third of each rung goes on (successive halving). The study folder holds Optuna's
    journal, trials.csv, trials.png, every trial's run folder, and best.toml: the best recipe, for
    `cifarctl train MODEL --config STUDY/best.toml`. --confirm N checks it against the default on the test set.

    Examples:

      cifarctl tune my_net.py:Net --time-budget 1h --trial-budget 2m

      cifarctl tune --resume STUDY                     (go on after Ctrl-C or a kill)

      cifarctl tune my_net.py:Net --time-budget 1h --jobs 2 --confirm 3

      cifarctl tune --storage postgresql://me:pw@db/tune --study net   (join a study from another machine)
    """
    from cifarctl.tune.study import require_optuna

    require_optuna()  # one line on how to install it, before anything else
    if trial is not None and resume is None:
        from cifarctl.errors import UsageError

        raise UsageError("--trial N writes one trial's recipe of a study: give --resume STUDY_FOLDER too")
    clock = process.started() or time.monotonic()
    command = TuneCommand(json_output, worker)
    session = command.open(model, resume, out, storage, study, dict(
        time_budget=time_budget, trial_budget=trial_budget, recipe=recipe, config=config, val_split=val_split,
        seed=seed, device=device, model_kwargs=model_kwargs, data=data, offline=offline, verify=verify,
        warm_start=warm_start), clock)
    if trial is not None:
        from cifarctl.tune.session import write_trial_recipe

        path = write_trial_recipe(session, trial, out or session.folder / f"trial-{trial}.toml")
        err_console().print(f"trial {trial}'s recipe: {path}")
        return
    command.search(session, jobs)
    if confirm and not worker:
        command.confirm(session, confirm, offline, verify)


class TuneCommand:
    """One ``cifarctl tune``: its study opened, its trials run here (and in --jobs workers), drawn live."""

    def __init__(self, json_output: bool, worker: bool) -> None:
        self.json_output, self.worker = json_output, worker
        self.err = err_console()

    def open(self, model: str | None, resume: Path | None, out: Path | None, storage: str | None,
             name: str | None, options: dict[str, Any], clock: float) -> Any:
        from cifarctl.cli.tune_start import open_session

        return open_session(self, model, resume, out, storage, name, options, clock)

    def say(self, text: str) -> None:
        if not self.worker:
            self.err.print(text, highlight=False)

    def search(self, session: Any, jobs: int) -> None:
        """Trials here (a live table of the study's trials) and in ``jobs - 1`` worker processes, until time's up."""
        from cifarctl.cli.process import stop_on_signals
        from cifarctl.cli.tune_view import TrialsView
        from cifarctl.groups.jobs import threads_per_job
        from cifarctl.training import TrainingInterrupted
        from cifarctl.tune.search import run_search
        from cifarctl.tune.session import write_files

        import torch

        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # torchrun's processes on this machine
        if os.environ.get(WORKER_THREADS):
            torch.set_num_threads(int(os.environ[WORKER_THREADS]))
        elif jobs * local > 1:
            torch.set_num_threads(threads_per_job(jobs * local))
        workers = [] if self.worker else self.start_workers(session, jobs)
        from rich.console import Console

        console = Console(quiet=True) if self.worker else self.err  # a worker's trials are in the study's table
        view = TrialsView(session, console, live=not (self.worker or self.json_output) and console.is_terminal)
        stop, received = threading.Event(), []

        def on_event(event: Any) -> None:
            view.update(event)
            if event.kind == "end":
                write_files(session)

        ended = False
        try:
            with stop_on_signals(stop, received), view:
                run_search(session.study, session.spec, session.folder, self.data, stop, on_event)
            ended = True
        except TrainingInterrupted:
            pass
        finally:
            self.end_workers(session.folder, workers, wait=ended and not received)
        if received == [signal.SIGINT] and not self.worker:  # Ctrl-C, not a kill: the best is still re-checked
            received = self.recheck_after_stop(session, view, on_event)
        files = write_files(session, final=not received)
        if received:
            self.say(f"stopped: the study is in {session.folder}; go on with: cifarctl tune --resume {session.folder}")
            raise typer.Exit(128 + received[0])
        if not self.worker:
            self.report(session, files)

    def recheck_after_stop(self, session: Any, view: Any, on_event: Any) -> list[int]:
        """After Ctrl-C ended the search: the re-check of the best, in the study's time left (a second Ctrl-C
        stops that too); the signals received meanwhile."""
        from cifarctl.cli.process import stop_on_signals
        from cifarctl.training import TrainingInterrupted
        from cifarctl.tune.search import run_recheck

        stop, received = threading.Event(), []
        self.say("the search is stopped: now the re-check of its best, in the time left (Ctrl-C again stops it)")
        try:
            with stop_on_signals(stop, received), view:
                run_recheck(session.study, session.spec, session.folder, self.data, stop, on_event)
        except TrainingInterrupted:
            pass
        return received

    def start_workers(self, session: Any, jobs: int) -> list[subprocess.Popen]:
        """``jobs - 1`` more processes on this study (``cifarctl tune --resume FOLDER --worker``)."""
        from cifarctl.groups.jobs import threads_per_job

        from cifarctl.groups.jobs import stop_with_parent
        from cifarctl.tune.study import WORKER

        command = [sys.executable, "-m", "cifarctl", "tune", "--resume", str(session.folder), "--worker",
                   "--device", self.device_name, "--data", session.spec.data]
        if self.offline:
            command.append("--offline")
        logs = session.folder / "workers"
        logs.mkdir(exist_ok=True)
        workers = []
        for number in range(1, jobs):
            env = {**os.environ, WORKER_THREADS: str(threads_per_job(jobs)), WORKER: str(number)}
            with (logs / f"worker-{number}.log").open("w") as log:  # what a worker says, for when it fails
                workers.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log,
                                                preexec_fn=stop_with_parent if os.name == "posix" else None))
        return workers

    def end_workers(self, folder: Path, workers: list[subprocess.Popen], wait: bool) -> None:
        """Wait for the workers to end their trials (``wait``; else stop them: this process stopped or
        failed), and say in a line each why any failed."""
        for worker in workers:
            if not wait:
                worker.terminate()
        for number, worker in enumerate(workers, start=1):
            code = worker.wait()
            if wait and code != 0:
                log = folder / "workers" / f"worker-{number}.log"
                lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()] \
                    if log.is_file() else []
                self.say(f"worker {number} failed (exit code {code}): {lines[-1] if lines else 'it said nothing'}"
                         f" (all of it: {log})")

    def report(self, session: Any, files: dict[str, Path]) -> None:
        from cifarctl.cli.tune_view import report

        report(session, files, self.json_output)

    def confirm(self, session: Any, seeds: int, offline: bool, verify: bool) -> None:
        from cifarctl.cli.tune_view import report_confirm

        report_confirm(session, seeds, offline, verify, self.json_output)

