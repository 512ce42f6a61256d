"""`cifarctl train`: train a model, resume a run, or fine-tune from a checkpoint."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from cifarctl.cli import process
from cifarctl.cli.options import (ConfigFile, Device, Json, ModelOrConfig, ModelKwargs, NumClasses, Offline, OutDir, TtaFraction,
                                  Verify, in_panel, numbers)
from cifarctl.cli.options import model_kwargs as parse_kwargs
from cifarctl.cli.render import handle_errors
from cifarctl.cli.train_run import TrainCommand


Flag = Optional[bool]
RECIPE = "Default: the model's recipe (`cifarctl models`)."
# The help's panels, as git and the hf CLI group their options.
P_MODEL, P_SCHEDULE, P_AUGMENTATION = "Model", "Schedule and optimizer", "Augmentation"
P_EVALUATION, P_RUN, P_SPEED, P_SEEDS = "Evaluation", "Run and output", "Speed", "Seeds"


@handle_errors
def train(
    model: ModelOrConfig = None,
    epochs: Annotated[Optional[float], typer.Option("--epochs", "-e", min=0.0, help=f"Epochs to train (total, for a resumed run; a fraction ends at its step). {RECIPE}", rich_help_panel=P_SCHEDULE)] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", min=1, help=f"Images per step (global under torchrun). {RECIPE}", rich_help_panel=P_SCHEDULE)] = None,
    micro_batch: Annotated[Optional[int], typer.Option("--micro-batch", min=1, help=f"Images run forward and backward at once: a larger batch is split into equal chunks with one optimizer step (BatchNorm sees each chunk). {RECIPE}", rich_help_panel=P_SPEED)] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help=f"Peak learning rate, in --lr-units. {RECIPE}", rich_help_panel=P_SCHEDULE)] = None,
    head_lr: Annotated[Optional[float], typer.Option("--head-lr", help=f"Peak learning rate of the classifier (the final linear layer's weights), in --lr-units (default: --lr). {RECIPE}", rich_help_panel=P_SCHEDULE)] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", min=1, help="Stop after N optimizer steps in total.", rich_help_panel=P_SCHEDULE)] = None,
    recipe: Annotated[Optional[str], typer.Option("--recipe", help="One of MODEL's recipes (`cifarctl models`), or for your own model a built-in's (onecycle, resnet18:onecycle); flags change single settings of it. Default: MODEL's first.", rich_help_panel=P_MODEL)] = None,
    time_budget: Annotated[Optional[str], typer.Option("--time-budget", help="Fit the run to this long, start-up to result (90s, 5m, 1h): measures a step here, then sets the schedule's length.", rich_help_panel=P_SCHEDULE)] = None,
    device: in_panel(Device, P_SPEED) = None,
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
    warmup_fraction: Annotated[Optional[float], typer.Option("--warmup-fraction", min=0.0, max=1.0, help="The ramp's share of the run when --warmup-epochs is 0 (default: onecycle's 25%, triangle's 23%).", rich_help_panel=P_SCHEDULE)] = None,
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
    config: in_panel(ConfigFile, P_RUN) = None,
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

      cifarctl train my_net.py:Net --config STUDY/best.toml --time-budget 2m   (the recipe `cifarctl tune` found)

      cifarctl train --config RUN/config.toml        (the run in RUN again: its config.toml has every setting)
    """
    # torch loads here, not at start-up, so `--help` and completion answer at once.
    from cifarctl.run.config import parse_tta
    from cifarctl.training.plan import parse_duration

    settings = dict(
        epochs=epochs, batch_size=batch_size, micro_batch=micro_batch, lr=lr, head_lr=head_lr, optimizer=optimizer,
        momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, norm_weight_decay=norm_weight_decay,
        lr_units=lr_units, lr_schedule=lr_schedule, warmup_epochs=warmup_epochs, warmup_fraction=warmup_fraction, label_smoothing=label_smoothing,
        translate=translate, flip=flip, ema=ema, init_from_data=init_from_data, tta=parse_tta(tta),
        tta_fraction=tta_fraction, color_jitter=numbers(color_jitter, 2, "--color-jitter"), eval_every=eval_every,
        val_split=val_split, seed=seed, data=data, amp=amp, eval_amp=eval_amp, tensorboard=tensorboard,
        channels_last=channels_last, keep_memory=keep_memory, compile=compile_model, sync_bn=sync_bn,
        max_steps=max_steps, save_every=save_every, log_every=log_every, device=device,
        eval=False if no_eval else None, time_budget=parse_duration(time_budget) if time_budget is not None else None,
        model_options=parse_kwargs(model_kwargs), num_classes=num_classes)
    model, recipe, ckpt, settings = with_config_file(config, model, recipe, ckpt, settings)
    command = TrainCommand(model, recipe, settings, resume=resume, ckpt=ckpt, out=out, plot=plot,
                           json_output=json_output, offline=offline, verify=verify,
                           clock=process.started() or time.monotonic())  # a budget counts from the start
    if seeds is not None or jobs is not None or target is not None or command.resumes_group():
        from cifarctl.cli.seeds import GroupCommand

        GroupCommand(command, seeds, jobs, target).run()
    else:
        command.run()


def with_config_file(config: Path | None, model: str | None, recipe: str | None, ckpt: str | None,
                     settings: dict) -> tuple[str, str | None, str | None, dict]:
    """MODEL, --recipe, --ckpt and the settings with a --config file's values under the command line's."""
    from cifarctl.cli.options import config_values
    from cifarctl.errors import UsageError
    from cifarctl.run.config_file import merge, train_keys

    from_file = config_values(config, train_keys(), "train") if config is not None else {}
    model = model or from_file.pop("model", None)
    recipe = recipe or from_file.pop("recipe", None)
    ckpt = ckpt or from_file.pop("init_ckpt", None)
    for key in ("model", "recipe", "init_ckpt"):
        from_file.pop(key, None)
    if model is None:
        raise UsageError("name the MODEL to train (`cifarctl models`), or give --config FILE with a model key")
    return model, recipe, ckpt, merge(from_file, settings)
