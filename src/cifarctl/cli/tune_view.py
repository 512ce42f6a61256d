"""What ``cifarctl tune`` shows: the live table of the study's trials, the result, and --confirm's comparison."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from cifarctl.cli.render import comparison_line, err_console, out_console, print_json

SHOWN = 12  # the latest trials the live table shows (all of them are in trials.csv)


class TrialsView:
    """A live table of the study's trials (every process's: read from the study), the best so far, the time
    left, and the trial running here; on a terminal that is not one (``live=False``) a line per finished trial."""

    def __init__(self, session: Any, console: Console, live: bool) -> None:
        self.session, self.console, self.live = session, console, live
        self.running: dict[int, str] = {}
        self._live: Live | None = None
        self._drawn = 0.0

    def __enter__(self) -> TrialsView:
        if self.live:
            self._live = Live(self.render(), console=self.console, refresh_per_second=1, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.update(self.render())
            self._live.__exit__(*exc)
            if not self.console.is_terminal:
                self.console.line()

    def update(self, event: Any) -> None:
        if event.kind == "epoch":
            self.running[event.number] = f"{event.note}, epoch {event.epoch:g}: {event.value:.2f}%"
        elif event.kind == "start":
            self.running[event.number] = "starting"
        else:
            self.running.pop(event.number, None)
            if not self.live:
                value = f"{event.value:.2f}%" if event.value is not None else "-"
                self.console.print(f"trial {event.number}: {event.state.lower()}, held-out accuracy {value} "
                                   f"({describe(event.settings)}){' · ' + event.note if event.note else ''}",
                                   highlight=False)
        if self._live is not None and (event.kind != "epoch" or time.monotonic() - self._drawn > 2):
            self._drawn = time.monotonic()
            self._live.update(self.render())

    def render(self) -> Any:
        from cifarctl.training.plan import format_duration
        from cifarctl.tune.study import spent_seconds

        session = self.session
        trials = session.study.get_trials(deepcopy=False)
        best = session.best_trial()
        left = max(session.spec.time_budget - spent_seconds(session.study, session.spec), 0.0)
        table = Table(title=f"study {session.name}", title_justify="left")
        from cifarctl.tune.files import rungs_text

        for column in ("trial", "state", "held-out acc", "rungs", "optimizer", "lr", "batch", "wd", "smoothing", "tta", "ema"):
            table.add_column(column, justify="right" if column not in ("state", "rungs", "optimizer") else "left")
        for trial in trials[-SHOWN:]:
            s = trial.user_attrs.get("settings", {})
            state = self.running.get(trial.number, trial.state.name.lower())
            value = f"{trial.value:.2f}%" if trial.value is not None else "-"
            table.add_row(str(trial.number), state, value, rungs_text(trial), str(s.get("optimizer", "")), _g(s.get("lr")),
                          str(s.get("batch_size", "")), _g(s.get("weight_decay")), _g(s.get("label_smoothing")),
                          str(s.get("tta", "")), "yes" if s.get("ema") else "")
        head = (f"best so far: trial {best.number}, {best.value:.2f}% held out" if best is not None
                else "no trial finished yet")
        return Group(table, Text(f"{head} · {len(trials)} trials · time left {format_duration(left)}"))


def _g(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


def describe(settings: dict[str, Any]) -> str:
    if not settings:
        return ""
    return (f"{settings.get('optimizer')} lr {_g(settings.get('lr'))}, batch {settings.get('batch_size')}, "
            f"wd {_g(settings.get('weight_decay'))}, smoothing {_g(settings.get('label_smoothing'))}, "
            f"tta {settings.get('tta')}{', ema' if settings.get('ema') else ''}")


def report(session: Any, files: dict[str, Path], json_output: bool) -> None:
    """The search's result: the best configuration (its single value and its re-check), what mattered, where
    its recipe is, and how to train with it."""
    import shlex

    from cifarctl.tune.files import recheck_text
    from cifarctl.tune.session import summary

    states: dict[str, int] = {}
    trials = session.study.get_trials(deepcopy=False)
    for trial in trials:
        states[trial.state.name.lower()] = states.get(trial.state.name.lower(), 0) + 1
    found = summary(session)
    if json_output:
        print_json({"study": session.name, "folder": str(session.folder), "trials": states, **found,
                    "files": {k: str(v) for k, v in files.items()}})
        return
    console = out_console()
    counts = ", ".join(f"{n} {state}" for state, n in states.items())
    console.print(f"study {session.name}: {len(trials)} trials ({counts}) in {session.folder}")
    best, checked = session.best_trial(), session.recheck()
    if best is None:
        console.print("no trial finished: give the search more time (--resume STUDY --time-budget LONGER)")
        return
    console.print(f"best: trial {best.number}, [bold green]{best.value:.2f}%[/] on {session.spec.val_split:,} held-out "
                  f"training images ({describe(best.user_attrs.get('settings', {}))})")
    if checked is not None:
        console.print(f"re-checked with new seeds: [bold]{recheck_text(checked)}[/]")
    else:
        console.print("not re-checked (no time was left for it): its value is one run's, likely the luckiest")
    if found["importances"]:
        top = sorted(found["importances"].items(), key=lambda kv: -kv[1])[:4]
        console.print("what mattered most: " + ", ".join(f"{name} {share:.2f}" for name, share in top))
    for edge in found["edges"]:
        console.print(f"{edge['setting']} = {_g(edge['value'])} is at the {edge['end']} end of its range "
                      f"({_g(edge['low'])} to {_g(edge['high'])}): the best may lie beyond it")
    console.print(f"recipe: {files['best']}; trials: {files['csv']}" + (f"; plot: {files['plot']}" if 'plot' in files else ""))
    console.print(f"train with it: cifarctl train {shlex.quote(session.spec.model)} --config {files['best']} "
                  f"--time-budget {session.spec.trial_budget:g}s --seeds 3")


def report_confirm(session: Any, seeds: int, offline: bool, verify: bool, json_output: bool) -> None:
    """--confirm N: the best recipe and the default, N seeds each on all the training images, on the test set."""
    from cifarctl.cli.data import load_data
    from cifarctl.tune.session import confirm, confirm_seeds

    console = err_console()
    console.print(f"confirming: the best recipe and the default, {seeds} seeds each in "
                  f"{session.spec.trial_budget:g} s, trained on all the training images and scored on the test set")
    import threading

    import typer

    from cifarctl.cli.process import stop_on_signals
    from cifarctl.training import TrainingInterrupted

    data = load_data(session.spec.data, offline, quiet=json_output, verify=verify)
    stop, received = threading.Event(), []
    try:
        with stop_on_signals(stop, received):
            default, best, result = confirm(session, confirm_seeds(session.spec, seeds), data, stop=stop)
    except TrainingInterrupted:
        console.print(f"stopped: finish with cifarctl tune --resume {session.folder} --confirm {seeds}")
        raise typer.Exit(128 + received[0] if received else 1) from None
    if json_output:
        print_json({"default": str(default), "best": str(best), "comparison": result.to_dict()})
        return
    out_console().print(f"test set: {comparison_line(result, 'default', 'best')}")
    out_console().print(f"[bold]{result.sentence}[/]  (cifarctl runs compare {default} {best})")
