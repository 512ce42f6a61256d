"""HTTP download that resumes a partial file with a Range request and retries transient errors.

TLS certificates are always verified (the CIFAR host has had certificate trouble; the answer to
that is a mirror via ``--url`` or ``--from``, never switching verification off).
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

from cifarctl.errors import DownloadError
from cifarctl.progress import NullProgress, Progress

_CHUNK = 1 << 20
_USER_AGENT = "cifarctl"


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    context = ssl.create_default_context()
    return urllib.request.urlopen(request, timeout=timeout, context=context)  # noqa: S310 (http/https only)


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code in (408, 429)
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, (ssl.SSLCertVerificationError,
                                                                           socket.gaierror)):
        return False  # a bad certificate or an unknown host name does not fix itself in seconds
    return isinstance(exc, (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError))


def _describe(url: str, exc: BaseException) -> str:
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, ssl.SSLCertVerificationError):
        return (f"the TLS certificate of {url} could not be verified ({reason.verify_message}); use --url with a "
                "mirror, or get the archive another way and run `cifarctl download --from FILE`")
    if isinstance(exc, urllib.error.HTTPError):
        return f"{url} answered HTTP {exc.code} {exc.reason}"
    return (f"cannot download {url} ({reason}); without internet, get the archive another way and run "
            "`cifarctl download --from FILE`")


def download_file(url: str, dest: Path, progress: Progress | None = None, retries: int = 5,
                  timeout: float = 60.0, backoff: float = 2.0) -> Path:
    """Download ``url`` to ``dest`` via ``dest + '.part'``, resuming a partial file.

    The part file is renamed to ``dest`` only once the server has sent every byte, so ``dest``
    never holds a truncated archive. Returns ``dest``.
    """
    if not url.lower().startswith(("http://", "https://")):
        raise DownloadError(f"--url must be an http(s) address, got {url!r}; for a local file use --from")
    progress = progress or NullProgress()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        try:
            with _open(url, offset, timeout) as response:
                if offset and response.status != 206:
                    offset = 0  # the server ignored Range: start over rather than append twice
                length = response.headers.get("Content-Length")
                total = offset + int(length) if length is not None else None
                progress.start(f"downloading {dest.name}", total, "bytes")
                progress.advance(offset)
                with open(part, "ab" if offset else "wb") as fh:
                    while chunk := response.read(_CHUNK):
                        fh.write(chunk)
                        progress.advance(len(chunk))
                    fh.flush()
                    os.fsync(fh.fileno())
                progress.finish()
                if total is not None and part.stat().st_size < total:
                    raise http.client.IncompleteRead(b"", total - part.stat().st_size)
            break
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:  # nothing left to send: the part file is complete
                break
            error: BaseException = exc
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            error = exc
        progress.finish()
        attempt += 1
        if attempt > retries or not _is_transient(error):
            kept = " (the partial file is kept; run the command again to resume)" if part.exists() else ""
            raise DownloadError(_describe(url, error) + kept) from None
        time.sleep(min(backoff * 2 ** (attempt - 1), 30.0))
    os.replace(part, dest)
    return dest
