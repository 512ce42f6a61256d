"""`cifarctl train`: train a model, resume a run, or fine-tune from a checkpoint."""

from __future__ import annotations

import contextlib
import shlex
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Iterator, Optional

import typer
from rich.console import Console

from cifarctl.cli.options import (NEWEST, Device, Json, ModelArg, ModelKwargs, NumClasses, Offline, OutDir, TtaFraction,
                                  Verify, in_panel, numbers)
from cifarctl.cli.options import model_kwargs as parse_kwargs
from cifarctl.cli.render import RichProgress, err_console, handle_errors, out_console, print_json

if TYPE_CHECKING:
    from cifarctl.training import TrainResult


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


Flag = Optional[bool]
RECIPE = "Default: the model's recipe (`cifarctl models`)."
# The help's panels, as git and the hf CLI group their options.
P_MODEL, P_SCHEDULE, P_AUGMENTATION = "Model", "Schedule and optimizer", "Augmentation"
P_EVALUATION, P_RUN, P_SPEED, P_SEEDS = "Evaluation", "Run and output", "Speed", "Seeds"


@handle_errors
def train(
    model: ModelArg,
    epochs: Annotated[Optional[float], typer.Option("--epochs", "-e", min=0.0, help=f"Epochs to train (total, for a resumed run; a fraction ends at its step). {RECIPE}", rich_help_panel=P_SCHEDULE)] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", min=1, help=f"Images per step (global under torchrun). {RECIPE}", rich_help_panel=P_SCHEDULE)] = None,
    micro_batch: Annotated[Optional[int], typer.Option("--micro-batch", min=1, help=f"Images run forward and backward at once: a larger batch is split into equal chunks with one optimizer step (BatchNorm sees each chunk). {RECIPE}", rich_help_panel=P_SPEED)] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help=f"Peak learning rate, in --lr-units. {RECIPE}", rich_help_panel=P_SCHEDULE)] = None,
    head_lr: Annotated[Optional[float], typer.Option("--head-lr", help=f"Peak learning rate of the classifier (the final linear layer's weights), in --lr-units (default: --lr). {RECIPE}", rich_help_panel=P_SCHEDULE)] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", min=1, help="Stop after N optimizer steps in total.", rich_help_panel=P_SCHEDULE)] = None,
    recipe: Annotated[Optional[str], typer.Option("--recipe", help="One of MODEL's recipes (`cifarctl models`), or for your own model a built-in's (onecycle, resnet18:onecycle); flags change single settings of it. Default: MODEL's first.", rich_help_panel=P_MODEL)] = None,
    time_budget: Annotated[Optional[str], typer.Option("--time-budget", help="Fit the run to this long, start-up to result (90s, 5m, 1h): measures a step here, then sets the schedule's length.", rich_help_panel=P_SCHEDULE)] = None,
    device: in_panel(Device, P_SPEED) = "auto",
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seeds the init, data order, augmentation and --val-split.", rich_help_panel=P_SCHEDULE)] = None,
    no_eval: Annotated[bool, typer.Option("--no-eval", help="Skip evaluation.", rich_help_panel=P_EVALUATION)] = False,
    out: in_panel(OutDir, P_RUN) = None,
    ckpt: Annotated[Optional[str], typer.Option("--ckpt", help="Start from these weights (cifarctl checkpoint or raw course state_dict), with a fresh schedule; bare: MODEL's newest checkpoint.", rich_help_panel=P_MODEL)] = None,
    resume: Annotated[Optional[str], typer.Option("--resume", help="Continue a run folder at its exact step, with its own settings; bare: MODEL's newest run.", rich_help_panel=P_MODEL)] = None,
    model_kwargs: in_panel(ModelKwargs, P_MODEL) = None,
    num_classes: in_panel(NumClasses, P_MODEL) = None,
    optimizer: Annotated[Optional[str], typer.Option("--optimizer", help=f"adam or sgd. {RECIPE}", rich_help_panel=P_SCHEDULE)] = None,
    momentum: Annotated[Optional[float], typer.Option("--momentum", help="SGD momentum (onecycle: its upper bound).", rich_help_panel=P_SCHEDULE)] = None,
    nesterov: Annotated[Flag, typer.Option("--nesterov/--no-nesterov", help="Nesterov momentum (SGD).", rich_help_panel=P_SCHEDULE)] = None,
    weight_decay: Annotated[Optional[float], typer.Option("--weight-decay", help="Weight decay of conv and linear weights.", rich_help_panel=P_SCHEDULE)] = None,
    norm_weight_decay: Annotated[Optional[float], typer.Option("--norm-weight-decay", help="Weight decay of norm-layer parameters and biases (default 0).", rich_help_panel=P_SCHEDULE)] = None,
    lr_units: Annotated[Optional[str], typer.Option("--lr-units", help="torch (as torch.optim takes them) or per1024 (airbench's: per 1024 examples of a summed loss).", rich_help_panel=P_SCHEDULE)] = None,
    lr_schedule: Annotated[Optional[str], typer.Option("--lr-schedule", help="none, step (/3 every 20 epochs), cosine, onecycle or triangle.", rich_help_panel=P_SCHEDULE)] = None,
    warmup_epochs: Annotated[Optional[float], typer.Option("--warmup-epochs", help="Linear ramp length in epochs.", rich_help_panel=P_SCHEDULE)] = None,
    label_smoothing: Annotated[Optional[float], typer.Option("--label-smoothing", help="Cross-entropy label smoothing.", rich_help_panel=P_SCHEDULE)] = None,
    translate: Annotated[Optional[int], typer.Option("--translate", min=0, help="Random shifts of up to N pixels (crop of a padded image); 0: none.", rich_help_panel=P_AUGMENTATION)] = None,
    flip: Annotated[Optional[str], typer.Option("--flip", help="random, alternate (each image flipped every other epoch) or none.", rich_help_panel=P_AUGMENTATION)] = None,
    color_jitter: Annotated[Optional[str], typer.Option("--color-jitter", help=f"BRIGHTNESS,CONTRAST: each image shifted by up to +-BRIGHTNESS and its contrast scaled by up to 1+-CONTRAST (normalised units), drawn per image and epoch; 0,0: none (the record recipe's 0.1399,0.1308). {RECIPE}", rich_help_panel=P_AUGMENTATION)] = None,
    ema: Annotated[Flag, typer.Option("--ema/--no-ema", help="Lookahead: an average of the weights, copied back every 5 steps.", rich_help_panel=P_SCHEDULE)] = None,
    init_from_data: Annotated[Flag, typer.Option("--init-from-data/--no-init-from-data", "--whiten/--no-whiten", help="Set the model up from a sample of the training images before the first step (its init_from_data hook: airbench94's whitening stem; --whiten is the same).", rich_help_panel=P_AUGMENTATION)] = None,
    tta: Annotated[Optional[str], typer.Option("--tta", help="Test-time augmentation of the final evaluation: 0 off, 1 flip, 2 flip and shift, selective (every image once, level 2 for the least confident).", rich_help_panel=P_EVALUATION)] = None,
    tta_fraction: in_panel(TtaFraction, P_EVALUATION) = None,
    eval_every: Annotated[Optional[int], typer.Option("--eval-every", min=0, help=f"Evaluate every N epochs as well as at the end, on the test split (or --val-split's images); 0: only at the end. {RECIPE}", rich_help_panel=P_EVALUATION)] = None,
    val_split: Annotated[Optional[int], typer.Option("--val-split", min=0, help="Hold out N training images (stratified) to choose best.pt; the test set is scored once, at the end.", rich_help_panel=P_EVALUATION)] = None,
    save_every: Annotated[Optional[int], typer.Option("--save-every", min=1, help="Checkpoint every N steps (default: every 3 minutes) and at each epoch end.", rich_help_panel=P_RUN)] = None,
    log_every: Annotated[Optional[int], typer.Option("--log-every", min=1, help="Optimizer steps between the step records of metrics.jsonl (default 50).", rich_help_panel=P_RUN)] = None,
    amp: Annotated[Flag, typer.Option("--amp/--no-amp", help="Mixed-precision training: bf16 (or fp16) on CUDA, bf16 on CPUs that compute it natively (default on).", rich_help_panel=P_SPEED)] = None,
    eval_amp: Annotated[Flag, typer.Option("--eval-amp/--no-eval-amp", help="Mixed-precision evaluation (default off: fp32, as `cifarctl evaluate`).", rich_help_panel=P_EVALUATION)] = None,
    tensorboard: Annotated[Flag, typer.Option("--tensorboard/--no-tensorboard", help="Also write the scalars of metrics.jsonl to RUN/tensorboard/ (pip install 'cifarctl[tensorboard]').", rich_help_panel=P_RUN)] = None,
    channels_last: Annotated[Flag, typer.Option("--channels-last/--no-channels-last", help="Memory format (default: on for CUDA and for CPU bf16).", rich_help_panel=P_SPEED)] = None,
    keep_memory: Annotated[Flag, typer.Option("--keep-memory/--no-keep-memory", help="Keep the memory each step frees in the process (glibc), instead of returning it to the system and faulting it in again: faster, at the cost of holding the peak (default: on for CPU fp32 training).", rich_help_panel=P_SPEED)] = None,
    compile_model: Annotated[Flag, typer.Option("--compile", help="torch.compile the model.", rich_help_panel=P_SPEED)] = None,
    sync_bn: Annotated[Flag, typer.Option("--sync-bn", help="Under torchrun: BatchNorm statistics over the global batch.", rich_help_panel=P_SPEED)] = None,
    plot: Annotated[bool, typer.Option("--plot", help="Draw learning curves into the run folder (curves.png).", rich_help_panel=P_RUN)] = False,
    data: Annotated[Optional[str], typer.Option("--data", help="cifar10 (the cached dataset) or fake (random data, no download).", rich_help_panel=P_RUN)] = None,
    offline: in_panel(Offline, P_RUN) = False,
    verify: in_panel(Verify, P_RUN) = False,
    json_output: in_panel(Json, P_RUN) = False,
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="Train N seeds (--seed, --seed+1, ...) or a list (0,3,7) as one group: each seed's run folder and summary.json in --out, their mean, std and 95% CI; --resume GROUP finishes it.", rich_help_panel=P_SEEDS)] = None,
    jobs: Annotated[Optional[int], typer.Option("--jobs", min=1, help="Seeds trained at once on this machine, in processes that divide its cores (default 1: on a 2-core CPU one at a time measured as fast, docs/performance.md).", rich_help_panel=P_SEEDS)] = None,
    target: Annotated[Optional[float], typer.Option("--target", help="With --seeds: how many seeds reach this test accuracy (%), and the p-value of the one-sided t-test that their mean is above it.", rich_help_panel=P_SEEDS)] = None,
) -> None:
    """Train MODEL with its own recipe: the course's (Adam + cross-entropy) for vgg16 and resnet50.

    Defaults depend on the model (see `cifarctl models`); each flag given changes that one setting,
    and config.json in the run folder records every value used. A model of your own (FILE.py:Name,
    package.module:name, torchvision:NAME) trains with the `default` recipe: Nesterov SGD on a
    onecycle schedule, lr 0.2 at batch 512 for 40 epochs, its final linear layer (the classifier)
    at head lr 0.01, and lr 0.02 for a model without normalisation layers; --recipe takes a built-in
    model's recipe instead (course, onecycle).

    Examples:

      cifarctl train airbench94 --device cpu                   (the airbench94 paper's recipe)

      cifarctl train airbench94 --recipe muon --time-budget 10m   (the best run 10 minutes allow)

      cifarctl train airbench --time-budget 5m    (airbench's width and recipe chosen for 5 minutes here)

      cifarctl train resnet50 --epochs 1 --device cuda

      cifarctl train vgg16 --ckpt vgg16_250.pt --epochs 1     (the course's "one more epoch")

      cifarctl train resnet50 --resume                         (continue the newest run)

      cifarctl train models/shufflenetv2.py:ShuffleNetV2 --model-kwargs net_size=0.5 --time-budget 10m

      cifarctl train airbench94_quarter --epochs 1 --seeds 5 --target 40   (5 seeds, their mean and spread)
    """
    # torch loads here, not at start-up, so `--help` and completion answer at once.
    import cifarctl.cli
    from cifarctl.run.config import parse_tta
    from cifarctl.training.budget import parse_duration

    settings = dict(
        epochs=epochs, batch_size=batch_size, micro_batch=micro_batch, lr=lr, head_lr=head_lr, optimizer=optimizer,
        momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, norm_weight_decay=norm_weight_decay,
        lr_units=lr_units, lr_schedule=lr_schedule, warmup_epochs=warmup_epochs, label_smoothing=label_smoothing,
        translate=translate, flip=flip, ema=ema, init_from_data=init_from_data, tta=parse_tta(tta),
        tta_fraction=tta_fraction, color_jitter=numbers(color_jitter, 2, "--color-jitter"), eval_every=eval_every,
        val_split=val_split, seed=seed, data=data, amp=amp, eval_amp=eval_amp, tensorboard=tensorboard,
        channels_last=channels_last, keep_memory=keep_memory, compile=compile_model, sync_bn=sync_bn,
        max_steps=max_steps, save_every=save_every, log_every=log_every, device=device if device != "auto" else None,
        eval=False if no_eval else None, time_budget=parse_duration(time_budget) if time_budget is not None else None,
        model_options=parse_kwargs(model_kwargs), num_classes=num_classes)
    command = TrainCommand(model, recipe, settings, resume=resume, ckpt=ckpt, out=out, plot=plot,
                           json_output=json_output, offline=offline, verify=verify,
                           clock=cifarctl.cli.PROCESS_STARTED or time.monotonic())  # a budget counts from the start
    if seeds is not None or jobs is not None or target is not None or command.resumes_group():
        from cifarctl.cli.seeds import GroupCommand

        GroupCommand(command, seeds, jobs, target).run()
    else:
        command.run()


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
        from cifarctl.training.budget import format_duration

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

