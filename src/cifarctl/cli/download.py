"""`cifarctl download`: put CIFAR-10 into the local cache."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cifarctl.cli.render import RichProgress, err_console, handle_errors, out_console


@handle_errors
def download(
    source: Annotated[Optional[Path], typer.Option("--from", help="Import from a local archive or folder instead of downloading.")] = None,
    url: Annotated[Optional[str], typer.Option("--url", help="Download from this mirror of cifar-10-python.tar.gz.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild the cache even if it is there.")] = False,
) -> None:
    """Download CIFAR-10 (md5-checked, resumable) or import it from a local copy.

    Examples:

      cifarctl download

      cifarctl download --from ~/Downloads/cifar-10-python.tar.gz

      cifarctl download --from ./cifar10-images/     (train/<class>/*.jpg and test/<class>/*.jpg)
    """
    from cifarctl.data import download_cifar10, import_cifar10

    # Where it reads and writes is said by the bar (the source) and by the last line (the cache).
    progress = RichProgress(err_console())
    def notify(text: str) -> None:  # another process is writing the cache: say why this one waits
        err_console().print(f"[yellow]{text}[/]", highlight=False)

    if source is not None:
        result = import_cifar10(source, force=force, progress=progress, notify=notify)
    else:
        result = download_cifar10(url=url, force=force, progress=progress, notify=notify)
    info = result.cache
    counts = f"{info.train:,} train + {info.test:,} test images"
    if result.action == "present":
        skipped = f"; {source} was not read" if source is not None else ""
        out_console().print(f"CIFAR-10 is already in {info.path} ({counts}, checksums verified){skipped}; "
                            "nothing to do (--force rebuilds it)")
    else:
        kept = f" (archive kept in {result.archive.parent})" if result.action == "downloaded" and result.archive else ""
        out_console().print(f"[green]CIFAR-10 is ready[/] in {info.path}: {counts}, {result.action} from "
                            f"{info.source}{kept}")
        if result.converted:
            modes = ", ".join(f"{n:,} {mode}" for mode, n in sorted(result.converted.items()))
            out_console().print(f"{sum(result.converted.values()):,} images were converted to 8-bit RGB ({modes})")
