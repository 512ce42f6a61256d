"""`cifarctl train MODEL --seeds N`: a group of seeds, drawn on the terminal (the library's ``train_group``)."""

from __future__ import annotations

import shlex
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from cifarctl.cli.process import stop_on_signals
from cifarctl.cli.render import RichLanes, RichProgress, out_console, print_json

if TYPE_CHECKING:
    from cifarctl.cli.train_run import TrainCommand
    from cifarctl.groups import GroupResult, SeedResult


class GroupCommand:
    """``--seeds`` (with ``--jobs``, ``--target``), or ``--resume GROUP``: the train command's settings, once a seed."""

    def __init__(self, command: TrainCommand, seeds: str | None, jobs: int | None, target: float | None) -> None:
        self.command, self.seeds, self.jobs, self.target = command, seeds, jobs, target
        self.err = command.err
        self.lanes = RichLanes(self.err, enabled=command.is_main)  # one bar per job, with --jobs

    def run(self) -> None:
        from cifarctl.training import TrainingInterrupted

        self.command.check_extras()
        stop, received = threading.Event(), []
        try:
            with stop_on_signals(stop, received):
                result = self.resume(stop) if self.command.resumes_group() else self.start(stop)
        except TrainingInterrupted as exc:
            self.lanes.finish()
            name = signal.Signals(received[0]).name if received else "a stop request"
            group = exc.run_dir.parent
            self.err.print(f"[yellow]{name}: {exc.run_dir.name} saved at step {exc.global_step}; the seeds done are in "
                           f"{group / 'summary.json'}[/]")
            self.err.print(f"finish the group with: cifarctl train {shlex.quote(self.command.model)} --resume "
                           f"{shlex.quote(str(group))}")
            raise typer.Exit(128 + received[0] if received else 1) from None
        self.lanes.finish()
        if self.command.is_main:
            self.report(result)

    def start(self, stop: threading.Event) -> GroupResult:
        """A new group: the request once (a family's choice too), then every seed of it."""
        from cifarctl.groups import DEFAULT_JOBS, plan_group, train_group

        cmd = self.command
        seeds = plan_group(self.seeds, self.jobs, self.target, first=cmd.settings.get("seed") or 0,
                           resuming=cmd.resume is not None)
        cmd.settings.pop("seed", None)
        request = cmd.request()
        if cmd.settings.get("time_budget") is not None:
            self.err.print(f"each seed trains with its own time budget of {cmd.settings['time_budget']:.0f} s, "
                           "counting the start-up the first one paid", highlight=False)
        jobs = self.jobs or DEFAULT_JOBS
        return train_group(request.cfg, seeds, self.dataset(request.cfg.data), cmd.out, jobs, self.target,
                           self.hooks(len(seeds), jobs), stop, cmd.clock)

    def resume(self, stop: threading.Event) -> GroupResult:
        """``--resume GROUP``: the seeds it has not finished, with the group's own settings."""
        from cifarctl.groups import check_group_flags, resume_group
        from cifarctl.run.group import read_group

        cmd = self.command
        group_dir = Path(cmd.resume).expanduser()  # type: ignore[arg-type]
        record = read_group(group_dir)
        check_group_flags(self.seeds, self.target)
        self.err.print(f"resuming the group in {group_dir}: {len(record.runs)} of {len(record.seeds)} seeds done")
        return resume_group(group_dir, self.dataset(record.config["data"]), cmd.model, cmd.settings,
                            self.hooks(len(record.seeds), self.jobs or record.jobs), stop, self.jobs, cmd.clock)

    def dataset(self, choice: str) -> Any:
        def load() -> Any:
            from cifarctl.cli.data import load_data

            cmd = self.command
            return load_data(choice, cmd.offline, quiet=cmd.json_output or not cmd.is_main, verify=cmd.verify)
        return load

    def hooks(self, count: int, jobs: int) -> Any:
        from cifarctl.groups import GroupHooks

        progress = RichProgress(self.err, enabled=self.command.is_main)
        return GroupHooks(progress=progress, notify=lambda text: self.err.print(text, highlight=False),
                          seed_started=self.seed_started, seed_done=self.seed_done,
                          lane=self.lanes.lane if jobs > 1 else None)

    def seed_started(self, seed: int, index: int, count: int, folder: Path) -> None:
        self.err.print(f"seed {index}/{count} ({seed}): {folder}", highlight=False)

    def seed_done(self, result: SeedResult, index: int, count: int) -> None:
        accuracy = f"{result.test_accuracy:.2f}%" if result.test_accuracy is not None else "not evaluated"
        self.err.print(f"[bold]seed {result.seed}[/] ({index}/{count}): test accuracy {accuracy}"
                       + (f" · loss {result.test_loss:.4f}" if result.test_loss is not None else "")
                       + f" · {result.epochs:.2f} epochs · {result.seconds:,.1f} s", highlight=False)

    def report(self, result: GroupResult) -> None:
        from cifarctl.cli.runs import render_group

        if self.command.json_output:
            print_json(result.to_dict())
            return
        render_group(result.model, [r.to_dict() for r in result.runs],
                     result.summary.to_dict() if result.summary else None, result.state, len(result.seeds))
        out_console().print(f"group: {result.group_dir}")
