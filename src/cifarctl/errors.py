"""Errors a user can act on. The CLI prints their message as one line; the library raises them."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class CifarctlError(Exception):
    """Base class: the message says what went wrong and what to do."""

    exit_code = 1


class UsageError(CifarctlError):
    """The command was asked for something it cannot parse or find (exit code 2)."""

    exit_code = 2


class DatasetError(CifarctlError):
    """The dataset is missing, incomplete or not what it claims to be."""


class DownloadError(DatasetError):
    """The download failed or its checksum does not match."""


class CheckpointError(CifarctlError):
    """A checkpoint is missing, unreadable or of another model."""


class DeviceError(CifarctlError):
    """The requested device is not available."""
