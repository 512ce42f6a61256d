"""Downloads against a local HTTP server (127.0.0.1) that can drop a connection half-way."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path
from typing import Iterator

import pytest

from cifarctl import paths
from cifarctl.data import download_cifar10, load_cifar10
from cifarctl.data.download import download_file
from cifarctl.errors import DatasetError, DownloadError


class _Server(http.server.ThreadingHTTPServer):
    payload: bytes = b""
    drop_after: int | None = None   # bytes sent before the first response is cut off
    honour_range: bool = True
    ranges: list[str | None]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        srv = self.server
        if self.path != "/cifar-10-python.tar.gz":
            self.send_error(404)
            return
        header = self.headers.get("Range")
        srv.ranges.append(header)
        start = int(header.split("=")[1].split("-")[0]) if header and srv.honour_range else 0
        body = srv.payload[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(srv.payload) - 1}/{len(srv.payload)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.drop_after is not None:
            cut, srv.drop_after = srv.drop_after, None
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture()
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.ranges = []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def _url(srv: _Server, name: str = "cifar-10-python.tar.gz") -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}/{name}"


def test_dropped_connection_resumes_with_range(server: _Server, tmp_path: Path) -> None:
    server.payload = bytes(range(256)) * 4000
    server.drop_after = 300_000
    dest = download_file(_url(server), tmp_path / "file.bin", backoff=0.01)
    assert dest.read_bytes() == server.payload
    assert server.ranges[0] is None and server.ranges[1] == "bytes=300000-"
    assert not (tmp_path / "file.bin.part").exists()


def test_part_file_from_an_earlier_run_is_continued(server: _Server, tmp_path: Path) -> None:
    server.payload = b"abcdef" * 10_000
    (tmp_path / "file.bin.part").write_bytes(server.payload[:12_345])
    download_file(_url(server), tmp_path / "file.bin")
    assert (tmp_path / "file.bin").read_bytes() == server.payload
    assert server.ranges == ["bytes=12345-"]


def test_server_ignoring_range_restarts_cleanly(server: _Server, tmp_path: Path) -> None:
    server.payload = b"0123456789" * 5_000
    server.honour_range = False
    (tmp_path / "file.bin.part").write_bytes(b"garbage-prefix")
    download_file(_url(server), tmp_path / "file.bin")
    assert (tmp_path / "file.bin").read_bytes() == server.payload


def test_missing_file_is_one_clear_error(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(_url(server, "nope.tar.gz"), tmp_path / "x", retries=0)


def test_unreachable_host_gives_up_after_retries(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="cannot download"):
        download_file("http://127.0.0.1:9/x.tar.gz", tmp_path / "x", retries=1, backoff=0.01, timeout=2)


def test_non_http_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="http"):
        download_file("file:///etc/passwd", tmp_path / "x")


def test_download_cifar10_end_to_end(home: Path, server: _Server, official_archive: Path) -> None:
    server.payload = official_archive.read_bytes()
    server.drop_after = len(server.payload) // 3
    result = download_cifar10(url=_url(server))
    assert result.action == "downloaded"
    assert load_cifar10().train_images.shape[0] == 200
    assert download_cifar10(url=_url(server)).action == "present"


def test_corrupt_download_is_deleted_and_reported(home: Path, server: _Server, official_archive: Path) -> None:
    payload = bytearray(official_archive.read_bytes())
    payload[100] ^= 0xFF
    server.payload = bytes(payload)
    with pytest.raises(DatasetError, match="md5"):
        download_cifar10(url=_url(server))
    assert not (paths.downloads_dir() / "cifar-10-python.tar.gz").exists()
    assert not list(paths.downloads_dir().iterdir())  # no partial file left behind either
    with pytest.raises(DatasetError, match="download"):
        load_cifar10()  # and nothing reached the cache


def test_unknown_host_fails_at_once_with_the_offline_hint(tmp_path: Path, monkeypatch) -> None:
    import socket
    import urllib.error

    calls = []

    def no_dns(*args, **kwargs):
        calls.append(1)
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr("urllib.request.urlopen", no_dns)
    with pytest.raises(DownloadError, match="--from FILE"):
        download_file("https://cifar.example/x.tar.gz", tmp_path / "x", retries=5, backoff=10)
    assert calls == [1]  # not retried: a missing host name does not come back in seconds
