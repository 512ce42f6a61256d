"""One ``cifarctl train`` run (``TrainCommand``): the library's request and run, drawn on the terminal."""

from __future__ import annotations

import shlex
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from cifarctl.cli.options import NEWEST
from cifarctl.cli.process import stop_on_signals
from cifarctl.cli.render import RichProgress, err_console, out_console, print_json

if TYPE_CHECKING:
    from cifarctl.training import TrainResult


class TrainCommand:
    """One ``cifarctl train``: the library's request and run, with what it says drawn on the terminal.
    Under torchrun every process runs it and rank 0 alone prints."""

    def __init__(self, model: str, recipe: str | None, settings: dict[str, Any], resume: str | None,
                 ckpt: str | None, out: Path | None, plot: bool, json_output: bool, offline: bool, verify: bool,
                 clock: float) -> None:
        from cifarctl import distributed as ddp

        self.model, self.recipe, self.settings, self.clock = model, recipe, settings, clock
        self.resume, self.ckpt, self.out, self.plot, self.json_output = resume, ckpt, out, plot, json_output
        self.offline, self.verify = offline, verify
        self.is_main = ddp.process_rank() == 0
        self.err = err_console() if self.is_main else Console(quiet=True)

    def resumes_group(self) -> bool:
        """Whether ``--resume`` names a group of seeds (a folder with summary.json)."""
        from cifarctl.run.group import is_group

        return self.resume is not None and self.resume != NEWEST and is_group(Path(self.resume).expanduser())

    def check_extras(self) -> None:
        """--plot and --tensorboard need their packages: said before anything trains."""
        if self.plot:
            from cifarctl.plots import require_plotting

            require_plotting()
        if self.settings.get("tensorboard"):
            from cifarctl.run.log import require_tensorboard

            require_tensorboard()

    def run(self) -> None:
        self.check_extras()
        request = self.request()
        result = self.train(request)
        if self.is_main:
            self.report(result, request)

    def request(self) -> Any:
        """The library's ``request_run``: the config, the run to resume, a family's choice (said here)."""
        from cifarctl.device import resolve_device
        from cifarctl.models.registry import is_family
        from cifarctl.training import request_run

        if is_family(self.model) and self.resume is None and self.settings.get("time_budget") is not None:
            self.err.print(f"choosing {self.model}'s width and recipe for the time: timing its members here ...")
        request = request_run(self.model, self.recipe, self.settings, resume_dir=self.resume, init_ckpt=self.ckpt,
                              clock=self.clock)
        self.device = resolve_device(request.cfg.device)  # a device that is not there fails here, in one line
        if request.choice is not None:
            where = "on this " + ("CPU" if self.device.type == "cpu" else "machine")
            self.err.print(request.choice.describe(where), highlight=False)
        return request

    def train(self, request: Any) -> TrainResult:
        """Train or resume, saving and stopping on the first Ctrl-C or SIGTERM (exit 128 + the signal)."""
        from cifarctl.cli.data import load_data
        from cifarctl.training import TrainingInterrupted
        from cifarctl.training import resume as resume_run
        from cifarctl.training import train as run_training

        cfg = request.cfg

        def dataset() -> Any:
            return load_data(cfg.data, self.offline, quiet=self.json_output or not self.is_main, verify=self.verify)

        stop, received = threading.Event(), []
        progress = RichProgress(self.err, enabled=self.is_main)
        try:
            with stop_on_signals(stop, received):
                if request.resume_dir is not None:
                    return resume_run(request.resume_dir, dataset, self.settings, progress=progress, stop=stop,
                                      loaded=request.loaded, model_spec=cfg.model, started=self.announce(cfg),
                                      notify=lambda text: self.err.print(f"[yellow]note:[/] {text}"))
                return run_training(cfg, dataset, out_dir=self.out, progress=progress, stop=stop, clock=self.clock,
                                    notify=lambda text: self.err.print(text, highlight=False),
                                    started=self.announce(cfg))
        except TrainingInterrupted as exc:
            progress.finish()
            name = signal.Signals(received[0]).name if received else "a stop request"
            self.err.print(f"[yellow]{name}: saved step {exc.global_step} to {exc.run_dir / 'last.pt'}[/]")
            self.err.print(f"resume with: cifarctl train {shlex.quote(cfg.model)} --resume {shlex.quote(str(exc.run_dir))}")
            raise typer.Exit(128 + received[0] if received else 1) from None

    def announce(self, cfg: Any) -> Any:
        """The ``started`` callback: where the run goes, on which device."""
        from cifarctl.device import describe_device
        from cifarctl.models.spec import display_name

        def started(start: Any) -> None:
            name, where = display_name(cfg.model), describe_device(self.device)
            if start.resumed:
                self.err.print(f"resuming {name} from {start.run_dir} on {where}")
                return
            processes = f" on {start.world_size} processes" if start.world_size > 1 else ""
            self.err.print(f"training {name}{processes} on {where}; run folder: {start.run_dir}")
            if cfg.init_ckpt:
                self.err.print(f"initialising {name} from {cfg.init_ckpt}; the learning-rate schedule starts afresh")

        return started

    def report(self, result: TrainResult, request: Any) -> None:
        from cifarctl.models.spec import display_name
        from cifarctl.training.plan import format_duration

        name = display_name(result.model)
        if self.plot:
            from cifarctl.plots import plot_learning_curves
            from cifarctl.run.log import MetricsLog

            curves = plot_learning_curves(MetricsLog(result.run_dir / "metrics.jsonl").read_safe(),
                                          result.run_dir / "curves.png", title=f"{name} ({result.run_dir.name})")
            self.err.print(f"learning curves drawn in {curves}")
        if self.json_output:
            print_json({**_result_dict(result), "choice": request.choice.to_dict() if request.choice else None})
        else:
            _render(result, name)
        if result.budget and request.resume_dir is None:  # a resumed run's clock started with this process
            spent = time.monotonic() - self.clock
            self.err.print(f"time budget {format_duration(result.budget['budget_s'])}: {result.budget['epochs']:.1f} "
                           f"epochs of {name} with {request.cfg.recipe}, TTA {result.tta}, finished in "
                           f"{format_duration(spent)}", highlight=False)


def _result_dict(result: TrainResult) -> dict[str, Any]:
    return {
        "model": result.model, "run_dir": str(result.run_dir), "checkpoint": str(result.run_dir / "last.pt"),
        "epochs_completed": result.epochs_completed, "global_step": result.global_step,
        "train_loss": result.train_loss, "train_accuracy": result.train_accuracy,
        "test_accuracy": result.test_accuracy, "test_loss": result.test_loss,
        "seconds": result.seconds, "images_per_s": result.images_per_s, "device": result.device,
        "tta": bool(result.tta), "tta_level": result.tta, "val_accuracy": result.val_accuracy,
        "best_test_accuracy": result.best_test_accuracy, "best_selected_on": result.best_selected_on,
        "finished_before": result.finished_before, "budget": result.budget,
    }



def _render(result: TrainResult, name: str) -> None:
    console = out_console()
    full = f"{result.epochs_completed} full epoch{'' if result.epochs_completed == 1 else 's'}"
    if result.finished_before:
        console.print(f"[bold]{name}[/]: finished run, {result.global_step:,} steps ({full})")
    else:
        console.print(f"[bold]{name}[/] on {result.device}: {result.global_step:,} steps ({full}) "
                      f"in {result.seconds:,.1f}s, "
                      f"{result.images_per_s:,.0f} img/s")
    console.print(f"train loss {result.train_loss:.4f} · train accuracy {result.train_accuracy:.2f}%")
    if result.val_accuracy is not None:
        console.print(f"validation accuracy {result.val_accuracy:.2f}% (chose best.pt)")
    if result.test_accuracy is not None:
        tta = f" (TTA level {result.tta})" if result.tta else ""
        console.print(f"test accuracy [bold green]{result.test_accuracy:.2f}%[/]{tta} · test loss {result.test_loss:.4f}")
    if result.best_test_accuracy is not None:
        console.print(f"best.pt test accuracy {result.best_test_accuracy:.2f}%")
    elif result.test_accuracy is not None and result.best_selected_on == "test":
        console.print("[dim]best.pt was chosen on the test set; --val-split N chooses it on held-out training "
                      "images instead[/]")
    console.print(f"checkpoint: {result.run_dir / 'last.pt'}")

