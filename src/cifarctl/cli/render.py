"""Everything that draws on the terminal: consoles, progress bars, errors, tables."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import warnings
from typing import Any, Callable, Iterator, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn, TransferSpeedColumn)

from cifarctl.errors import CifarctlError, describe_os_error

DEBUG_ENV = "CIFARCTL_DEBUG"

F = TypeVar("F", bound=Callable[..., Any])


def out_console() -> Console:
    """Results go to stdout (so ``--json`` output can be piped); wide when redirected, so tables keep their cells."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def print_whole(renderable: Any) -> None:
    """Print a table on stdout at its natural width, however narrow the terminal: no cell is cut short or
    wrapped (the terminal folds a line longer than it is wide, so a row stays one line when copied)."""
    from rich.measure import Measurement

    console = out_console()
    natural = Measurement.get(console, console.options.update(width=100_000), renderable).maximum
    if natural > console.width:
        console = Console(highlight=False, width=natural, force_terminal=console.is_terminal,
                          color_system=console.color_system)
    console.print(renderable)


def err_console() -> Console:
    """Progress, notices and errors go to stderr."""
    return Console(stderr=True, highlight=False, soft_wrap=True)  # a message stays one line however long


def print_json(data: Any) -> None:
    """Exactly one JSON object on stdout, nothing else."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` as one red line on stderr; return the Exit to raise."""
    err_console().print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


def handle_errors(func: F) -> F:
    """Turn a known error into one red line and its exit code (a traceback only with CIFARCTL_DEBUG=1)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CifarctlError as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            raise fail(str(exc), exc.exit_code) from None
        except OSError as exc:  # permissions, a full disk, a file where a folder should be: one line too
            if os.environ.get(DEBUG_ENV):
                raise
            raise fail(describe_os_error(exc), 1) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def noted_warnings(console: Console) -> Iterator[None]:
    """The library's warnings about the user's model (its source file changed since training) as yellow notes."""
    from cifarctl.models.spec import ModelSourceChanged

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ModelSourceChanged)
        try:
            yield
        finally:
            for warning in caught:
                if issubclass(warning.category, ModelSourceChanged):
                    console.print(f"[yellow]warning:[/] {escape(str(warning.message))}", highlight=False)
                else:
                    warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)


class RichProgress:
    """The library's ``Progress`` protocol drawn as rich bars on stderr."""

    def __init__(self, console: Console | None = None, enabled: bool = True) -> None:
        self.console = console or err_console()
        self.enabled = enabled
        self._bar: Progress | None = None
        self._task: Any = None

    def start(self, description: str, total: float | None, unit: str = "") -> None:
        self.finish()
        if not self.enabled:
            return
        if unit == "bytes":
            columns: list[Any] = [TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                  TransferSpeedColumn(), TimeRemainingColumn()]
        else:
            columns = [TextColumn("{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
                       TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
        self._bar = Progress(*columns, console=self.console, transient=description == "evaluating")
        self._bar.start()
        self._task = self._bar.add_task(description, total=total, info="")

    def advance(self, amount: float = 0, **info: object) -> None:
        if self._bar is None:
            return
        fields = {"info": format_info(info)} if info else {}
        self._bar.update(self._task, advance=amount, **fields)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def relabel(self, description: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=description)


class RichLanes:
    """Several tasks drawn at once, one line each (``--jobs``: a bar per job); ``lane(i)`` is task ``i``'s
    ``Progress``."""

    def __init__(self, console: Console | None = None, enabled: bool = True) -> None:
        self.console, self.enabled = console or err_console(), enabled
        self._bar: Progress | None = None
        self._tasks: dict[int, Any] = {}

    def lane(self, index: int) -> _Lane:
        return _Lane(self, index)

    def _task(self, index: int, description: str, total: float | None) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=self.console)
            self._bar.start()
        if index in self._tasks:
            self._bar.reset(self._tasks[index], total=total, description=description, info="")
        else:
            self._tasks[index] = self._bar.add_task(description, total=total, info="")

    def _update(self, index: int, **fields: Any) -> None:
        if self._bar is not None and index in self._tasks:
            self._bar.update(self._tasks[index], **fields)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar, self._tasks = None, {}


class _Lane:
    """One task of ``RichLanes``, as the library's ``Progress``."""

    def __init__(self, lanes: RichLanes, index: int) -> None:
        self.lanes, self.index = lanes, index

    def start(self, description: str, total: float | None, unit: str = "") -> None:
        self.lanes._task(self.index, f"job {self.index + 1} · {description}", total)

    def advance(self, amount: float = 0, **info: object) -> None:
        self.lanes._update(self.index, advance=amount, **({"info": format_info(info)} if info else {}))

    def finish(self) -> None:
        pass  # the line stays until the job's next task replaces it

    def relabel(self, description: str) -> None:
        self.lanes._update(self.index, description=f"job {self.index + 1} · {description}")


def format_info(info: dict[str, object]) -> str:
    parts = []
    if "loss" in info:
        parts.append(f"loss {float(info['loss']):.3f}")  # type: ignore[arg-type]
    if "acc" in info:
        parts.append(f"acc {float(info['acc']):.1f}%")  # type: ignore[arg-type]
    if "img_s" in info:
        parts.append(f"{float(info['img_s']):,.0f} img/s")  # type: ignore[arg-type]
    return " · ".join(parts)


def comparison_line(result: Any, a: str = "A", b: str = "B") -> str:
    """One line of two groups compared (``stats.Comparison``): each mean with its n, the difference, its 95%
    interval and the time ratio; ``a`` and ``b`` name the groups (``runs compare``, ``tune --confirm``)."""
    interval = f", 95% CI {result.ci95[0]:+.2f} to {result.ci95[1]:+.2f}" if result.ci95 else ""
    times = f"; {b} takes {result.time_ratio:.2f}x {a}'s time" if result.time_ratio is not None else ""
    return (f"{a}: {result.mean_a:.2f}% (n={result.n_a}) · {b}: {result.mean_b:.2f}% (n={result.n_b}) · "
            f"{b} - {a} = {result.difference:+.2f} points{interval}{times}")
