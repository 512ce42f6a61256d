"""Errors a user can act on. The CLI prints their message as one line; the library raises them."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def os_error_cause(exc: BaseException | None) -> OSError | None:
    """The OSError behind ``exc``: itself, or one in its cause/context chain (torch wraps write errors)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def describe_os_error(exc: OSError, doing: str | None = None) -> str:
    """One line: what was being done, the path, the system's reason and its code.

    ``cannot write the checkpoint run/last.pt: No space left on device (28)``
    """
    path = exc.filename if exc.filename is not None else ""
    reason = exc.strerror or first_line(exc)
    code = f" ({exc.errno})" if exc.errno is not None else ""
    what = doing or ("cannot use" if path else "a file operation failed")
    where = f" {path}" if path and (doing is None or str(path) not in doing) else ""
    if exc.filename2:
        where += f" -> {exc.filename2}"
    return f"{what}{where}: {reason}{code}"


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


class FileSystemError(CifarctlError):
    """A read or write failed for a reason of the system's (disk full, permissions, a file where a folder
    should be); ``errno`` is the system's code. The message says what is kept."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class RunInUse(CifarctlError):
    """Another process is training in this run folder (it holds the folder's lock)."""
