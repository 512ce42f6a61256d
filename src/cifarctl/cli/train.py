"""`cifarctl train`: train a model, resume a run, or fine-tune from a checkpoint."""

from __future__ import annotations

import contextlib
import shlex
import signal
import threading
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer
from rich.console import Console

from cifarctl.cli.data import load_data
from cifarctl.cli.options import NEWEST, BatchSize, DataChoice, Device, Json, Offline, OutDir
from cifarctl.cli.render import RichProgress, err_console, handle_errors, out_console, print_json
from cifarctl.engine import TrainConfig, TrainingInterrupted, TrainResult, find_latest
from cifarctl.engine import resume as resume_run
from cifarctl.engine import train as run_training
from cifarctl.engine import distributed as ddp
from cifarctl.engine.device import resolve_device
from cifarctl.engine.train import latest_run_dir, new_run_dir
from cifarctl.models import create_model


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event, received: list[int]) -> Iterator[None]:
    """First SIGINT/SIGTERM asks the loop to save and stop; a second SIGINT stops at once."""

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(signum)
        stop.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@handle_errors
def train(
    model: Annotated[str, typer.Argument(help="Model name, e.g. vgg16 or resnet50.")],
    epochs: Annotated[Optional[int], typer.Option("--epochs", "-e", min=1, help="Epochs to train (total, for a resumed run).")] = None,
    batch_size: BatchSize = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Learning rate (peak for onecycle). Default 1e-3 for Adam, 0.05 for SGD.")] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", min=1, help="Stop after N optimizer steps in total.")] = None,
    device: Device = "auto",
    seed: Annotated[int, typer.Option("--seed", help="Seeds the init, data order and augmentation.")] = 0,
    no_eval: Annotated[bool, typer.Option("--no-eval", help="Skip test-set evaluation.")] = False,
    out: OutDir = None,
    ckpt: Annotated[Optional[str], typer.Option("--ckpt", help="Start from these weights (cifarctl checkpoint or raw course state_dict); bare: MODEL's newest checkpoint.")] = None,
    resume: Annotated[Optional[str], typer.Option("--resume", help="Continue a run folder at its exact step; bare: MODEL's newest run.")] = None,
    optimizer: Annotated[str, typer.Option("--optimizer", help="adam or sgd.")] = "adam",
    momentum: Annotated[float, typer.Option("--momentum", help="SGD momentum.")] = 0.9,
    nesterov: Annotated[bool, typer.Option("--nesterov", help="Nesterov momentum (SGD).")] = False,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="L2 weight decay.")] = 0.0,
    lr_schedule: Annotated[str, typer.Option("--lr-schedule", help="none, step (/3 every 20 epochs), cosine or onecycle.")] = "none",
    warmup_epochs: Annotated[float, typer.Option("--warmup-epochs", help="Linear warmup length in epochs.")] = 0.0,
    label_smoothing: Annotated[float, typer.Option("--label-smoothing", help="Cross-entropy label smoothing.")] = 0.0,
    save_every: Annotated[Optional[int], typer.Option("--save-every", min=1, help="Checkpoint every N steps (default: every 3 minutes) and at each epoch end.")] = None,
    amp: Annotated[bool, typer.Option("--amp/--no-amp", help="Mixed precision: bf16 (or fp16) on CUDA, bf16 on CPUs that compute it natively.")] = True,
    channels_last: Annotated[Optional[bool], typer.Option("--channels-last/--no-channels-last", help="Memory format (default: on for CUDA and for CPU bf16).")] = None,
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile the model.")] = False,
    sync_bn: Annotated[bool, typer.Option("--sync-bn", help="Under torchrun: BatchNorm statistics over the global batch.")] = False,
    plot: Annotated[bool, typer.Option("--plot", help="Draw learning curves into the run folder (curves.png).")] = False,
    data: DataChoice = "cifar10",
    offline: Offline = False,
    json_output: Json = False,
) -> None:
    """Train MODEL with Adam + cross-entropy (the course's recipe) or another recipe.

    Examples:

      cifarctl train resnet50 --epochs 1 --device cuda

      cifarctl train vgg16 --ckpt vgg16_250.pt --epochs 1     (the course's "one more epoch")

      cifarctl train resnet50 --resume                         (continue the newest run)
    """
    create_model(model)
    init_from = None if ckpt is None else find_latest(model) if ckpt == NEWEST else Path(ckpt).expanduser()
    if plot:
        from cifarctl.plots import require_plotting

        require_plotting()
    # Under torchrun every process runs this command; rank 0 alone draws, prints and writes.
    info = ddp.init_distributed(resolve_device(device)) if ddp.launched_by_torchrun() else ddp.DistInfo()
    err = err_console() if info.is_main else Console(quiet=True)
    dataset = ddp.main_first(lambda: load_data(data, offline, quiet=json_output or not info.is_main))
    stop, received = threading.Event(), []
    progress = RichProgress(err, enabled=info.is_main)
    try:
        with stop_on_signals(stop, received):
            if resume is not None:
                run_dir = ddp.broadcast_object(latest_run_dir(model) if resume == NEWEST else Path(resume).expanduser())
                err.print(f"resuming {model} from {run_dir}")
                overrides = {"epochs": epochs, "max_steps": max_steps, "device": device, "save_every": save_every}
                if no_eval:
                    overrides["eval"] = False
                result = resume_run(run_dir, dataset, overrides, progress=progress, stop=stop,
                                    notify=lambda text: err.print(f"[yellow]note:[/] {text}"))
            else:
                cfg = TrainConfig(
                    model=model, epochs=epochs or 1, batch_size=batch_size or 100, lr=lr,
                    optimizer=optimizer, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                    lr_schedule=lr_schedule, warmup_epochs=warmup_epochs, label_smoothing=label_smoothing,
                    max_steps=max_steps, seed=seed, device=device, eval=not no_eval, data=data,
                    init_ckpt=str(init_from) if init_from else None, save_every=save_every, amp=amp,
                    channels_last=channels_last, compile=compile_model, sync_bn=sync_bn,
                )
                run_dir = ddp.broadcast_object(out or new_run_dir(model))
                processes = f" on {info.world_size} processes" if info.enabled else ""
                err.print(f"training {model}{processes}; run folder: {run_dir}")
                if init_from:
                    err.print(f"initialising {model} from {init_from}")
                result = run_training(cfg, dataset, out_dir=run_dir, progress=progress, stop=stop)
    except TrainingInterrupted as exc:
        progress.finish()
        name = signal.Signals(received[0]).name if received else "a stop request"
        err.print(f"[yellow]{name}: saved step {exc.global_step} to {exc.run_dir / 'last.pt'}[/]")
        err.print(f"resume with: cifarctl train {model} --resume {shlex.quote(str(exc.run_dir))}")
        code = 128 + received[0] if received else 1
        raise typer.Exit(code) from None
    finally:
        ddp.shutdown()
    if not info.is_main:
        return
    if plot:
        from cifarctl.engine.metrics import MetricsLog
        from cifarctl.plots import plot_learning_curves

        curves = plot_learning_curves(MetricsLog(result.run_dir / "metrics.jsonl").read_safe(),
                                      result.run_dir / "curves.png", title=f"{model} ({result.run_dir.name})")
        err.print(f"learning curves drawn in {curves}")
    if json_output:
        print_json(_result_dict(result))
    else:
        _render(result)


def _result_dict(result: TrainResult) -> dict[str, Any]:
    return {
        "model": result.model, "run_dir": str(result.run_dir), "checkpoint": str(result.run_dir / "last.pt"),
        "epochs_completed": result.epochs_completed, "global_step": result.global_step,
        "train_loss": result.train_loss, "train_accuracy": result.train_accuracy,
        "test_accuracy": result.test_accuracy, "test_loss": result.test_loss,
        "seconds": result.seconds, "images_per_s": result.images_per_s, "device": result.device,
    }


def _render(result: TrainResult) -> None:
    console = out_console()
    console.print(f"[bold]{result.model}[/] on {result.device}: {result.global_step:,} steps "
                  f"({result.epochs_completed} full epochs) in {result.seconds:,.1f}s, {result.images_per_s:,.0f} img/s")
    console.print(f"train loss {result.train_loss:.4f} · train accuracy {result.train_accuracy:.2f}%")
    if result.test_accuracy is not None:
        console.print(f"test accuracy [bold green]{result.test_accuracy:.2f}%[/] · test loss {result.test_loss:.4f}")
    console.print(f"checkpoint: {result.run_dir / 'last.pt'}")

