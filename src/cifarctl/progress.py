"""How the library reports progress without printing: the CLI passes a reporter that draws bars."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Receives progress of one task at a time; the CLI implements it with rich."""

    def start(self, description: str, total: float | None, unit: str = "") -> None:
        """A new task begins; ``total`` in ``unit`` (bytes, images, steps) or None if unknown."""

    def advance(self, amount: float = 0, **info: object) -> None:
        """``amount`` more units are done; ``info`` (loss=..., acc=...) is shown beside the bar."""

    def finish(self) -> None:
        """The current task ended."""

    def relabel(self, description: str) -> None:
        """The current task's description changed (a time budget fixed the run's length). Optional."""


class NullProgress:
    """Reports nothing: the default for library calls."""

    def start(self, description: str, total: float | None, unit: str = "") -> None:
        pass

    def advance(self, amount: float = 0, **info: object) -> None:
        pass

    def finish(self) -> None:
        pass

    def relabel(self, description: str) -> None:
        pass
