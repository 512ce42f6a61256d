"""How ``cifarctl tune`` opens its study: a new one from MODEL and the options, or one to go on with or join."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from cifarctl.errors import UsageError

DEFAULT_TRIAL_BUDGET = "2m"
# A config file's keys that are the study's own choices, not a trial's fixed settings.
NOT_FIXED = ("model", "recipe", "epochs", "max_steps", "time_budget", "schedule_steps", "seed", "val_split", "data",
             "init_ckpt", "choice")


def open_session(command: Any, model: str | None, resume: Path | None, out: Path | None, storage: str | None,
                 name: str | None, options: dict[str, Any], clock: float) -> Any:
    """The study this command works on; sets ``command.data`` (the validation view), ``device_name`` and
    ``offline`` for its trials and workers."""
    from cifarctl import distributed as ddp
    from cifarctl.tune.session import join

    command.device_name, command.offline = options["device"] or "auto", options["offline"]
    if ddp.launched_by_torchrun():
        if out is None and resume is None:
            raise UsageError("under torchrun, give --out STUDY_FOLDER: every rank runs its own trials of that one study")
        if ddp.process_rank() != 0:  # rank 0 starts the study (its lr range tests); the others join it
            command.worker = True
            session = join(_wait_for_study(Path(resume or out).expanduser()))
            command.data = _view(session.spec, options)
            return session
    if resume is not None or (model is None and options["config"] is None):
        if resume is None and (storage is None or name is None):
            raise UsageError("name the MODEL to tune, or --resume STUDY_FOLDER, or --storage URL --study NAME to join")
        session = join(Path(resume).expanduser() if resume else out, storage, name)
        if options["time_budget"] is not None:
            _extend(session, options["time_budget"])
        command.data = _view(session.spec, options)
        command.say(f"study {session.name} in {session.folder}: {_count(session)} trials so far")
        return session
    return _start(command, model, out, storage, name, options)


def _start(command: Any, model: str | None, out: Path | None, storage: str | None, name: str | None,
           options: dict[str, Any]) -> Any:
    from cifarctl.cli.options import config_values
    from cifarctl.cli.options import model_kwargs as parse_kwargs
    from cifarctl.device import resolve_device
    from cifarctl.models import model_card
    from cifarctl.models.spec import canonical_spec, check_spec
    from cifarctl.run.config import NULL
    from cifarctl.run.config_file import train_keys
    from cifarctl.training.plan import format_duration, parse_duration
    from cifarctl.tune.session import default_folder, start
    from cifarctl.tune.study import TuneSpec

    from_file = config_values(options["config"], train_keys(), "tune") if options["config"] is not None else {}
    model = model or from_file.get("model")
    if model is None:
        raise UsageError("name the MODEL to tune (`cifarctl models`, or path/to/file.py:ClassName)")
    if options["time_budget"] is None:
        raise UsageError("give the search's --time-budget (e.g. 1h): trials start while a whole one still fits")
    total = parse_duration(options["time_budget"])
    trial = parse_duration(options["trial_budget"] or DEFAULT_TRIAL_BUDGET)
    if trial > total:
        raise UsageError(f"--trial-budget {format_duration(trial)} is longer than --time-budget {format_duration(total)}: "
                         "no trial would fit; give a longer --time-budget or a shorter --trial-budget")
    check_spec(model)  # an unknown model fails here, with close matches, before anything is written
    model_card(model)
    base = {k: None if v is NULL else v for k, v in from_file.items() if k not in NOT_FIXED}  # None: unset
    if options["model_kwargs"]:
        base["model_options"] = {**base.get("model_options", {}), **parse_kwargs(options["model_kwargs"])}
    if options["device"] is not None:  # given (auto too): over the file's
        base["device"] = options["device"]
    device = resolve_device(base.get("device") or "auto")  # the range tests' too
    study_own = {key: options[key] if options[key] is not None else from_file.get(key, default)
                 for key, default in (("val_split", 5000), ("seed", 0), ("data", "cifar10"))}
    spec = TuneSpec(canonical_spec(model), options["recipe"] or from_file.get("recipe"), trial, total,
                    study_own["val_split"], study_own["seed"], base, data=study_own["data"])
    folder = Path(out).expanduser() if out is not None else default_folder(spec.model)
    if storage is not None and "://" in storage:  # a database that cannot be reached fails before anything
        from cifarctl.tune.study import open_storage

        open_storage(folder, storage)
    command.data = _view(spec, options)
    command.say(f"tuning {model} for {format_duration(total)} in trials of {format_duration(trial)}, judged on "
                f"{spec.val_split:,} held-out training images; study folder: {folder}")
    warm = Path(options["warm_start"]).expanduser() if options.get("warm_start") else None
    return start(folder, spec, command.data, device, storage, name, notify=command.say, warm_start=warm)


def _wait_for_study(folder: Path, timeout_s: float = 1800.0) -> Path:
    """A torchrun rank's wait for rank 0 to start the study in ``folder`` (its study.json is written last)."""
    import time

    from cifarctl.run.index import STUDY_FILE

    deadline = time.monotonic() + timeout_s
    while not (folder / STUDY_FILE).is_file():
        if time.monotonic() > deadline:
            raise UsageError(f"rank 0 did not start the study in {folder} within {timeout_s:.0f} s: see its output")
        time.sleep(1.0)
    return folder


def _view(spec: Any, options: dict[str, Any]) -> Any:
    """The training images less the held-out ones, which stand in for the test split (never loaded)."""
    from cifarctl.data.prepare import dataset_for
    from cifarctl.tune.search import validation_view

    data = dataset_for(spec.data, options["offline"], verify=options["verify"], test=False)
    return validation_view(data, spec.val_split, spec.seed)


def _extend(session: Any, budget: str) -> None:
    """``--resume STUDY --time-budget T``: the study's whole budget becomes T."""
    from cifarctl.training.plan import parse_duration
    from cifarctl.tune.files import write_study_file
    from cifarctl.tune.study import SPEC_KEY

    session.spec = dataclasses.replace(session.spec, time_budget=parse_duration(budget))
    session.study.set_user_attr(SPEC_KEY, session.spec.to_dict())
    write_study_file(session.folder, session.spec, session.storage, session.name)


def _count(session: Any) -> int:
    return len(session.study.get_trials(deepcopy=False))
