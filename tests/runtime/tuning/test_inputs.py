"""URL inputs download with retries, resume over Range, and record (or verify) checksums."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaito.runtime.tuning.inputs import InputError, fetch_url, fetch_urls, read_inputs
from tests.support.registry import free_port

BODY = bytes(range(256)) * 400  # 100 KiB
DIGEST = "sha256:" + hashlib.sha256(BODY).hexdigest()


class FlakyServer(http.server.ThreadingHTTPServer):
    """Serves BODY at /data.jsonl; fails the first `failures` requests, may cut the first body."""

    failures = 0
    cut_first_body = False
    requests: list[str | None]


class Handler(http.server.BaseHTTPRequestHandler):
    server: FlakyServer

    def log_message(self, *args: object) -> None:
        return None

    def do_GET(self) -> None:
        self.server.requests.append(self.headers.get("Range"))
        if self.path.split("?")[0] != "/data.jsonl":
            self.send_error(404)
            return
        if self.server.failures > 0:
            self.server.failures -= 1
            self.send_error(503)
            return
        start = 0
        if (value := self.headers.get("Range")) is not None:
            start = int(value.removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(BODY) - 1}/{len(BODY)}")
        else:
            self.send_response(200)
        payload = BODY[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.server.cut_first_body:
            self.server.cut_first_body = False
            self.wfile.write(payload[: len(payload) // 3])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)


@pytest.fixture
def server() -> Iterator[FlakyServer]:
    httpd = FlakyServer(("127.0.0.1", 0), Handler)
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def url(server: FlakyServer, suffix: str = "") -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/data.jsonl{suffix}"


def test_a_download_lands_under_its_basename_with_its_digest_recorded(
    server: FlakyServer, tmp_path: Path
) -> None:
    [fetched] = fetch_urls([url(server, "?download=true")], tmp_path)
    assert fetched.path == tmp_path / "data.jsonl"
    assert fetched.path.read_bytes() == BODY
    assert fetched.sha256 == DIGEST
    assert read_inputs(tmp_path) == [fetched.to_json()]


def test_transient_server_errors_are_retried(server: FlakyServer, tmp_path: Path) -> None:
    server.failures = 2
    fetched = fetch_url(url(server), tmp_path / "d.jsonl", backoff_s=0.01)
    assert fetched.path.read_bytes() == BODY
    assert len(server.requests) == 3


def test_a_cut_download_resumes_with_a_range_request(server: FlakyServer, tmp_path: Path) -> None:
    server.cut_first_body = True
    fetched = fetch_url(url(server), tmp_path / "d.jsonl", backoff_s=0.01)
    assert fetched.path.read_bytes() == BODY
    assert server.requests[0] is None
    assert server.requests[1] is not None and server.requests[1].startswith("bytes=")
    assert not any(p.name.endswith(".part") for p in tmp_path.iterdir())


def test_a_pinned_checksum_that_does_not_match_fails_and_keeps_nothing(
    server: FlakyServer, tmp_path: Path
) -> None:
    with pytest.raises(InputError, match="checksum mismatch"):
        fetch_url(url(server, "#sha256=" + "0" * 64), tmp_path / "d.jsonl")
    assert list(tmp_path.iterdir()) == []
    ok = fetch_url(url(server, "#sha256=" + DIGEST.split(":")[1]), tmp_path / "d.jsonl")
    assert ok.sha256 == DIGEST


def test_an_unreachable_url_fails_with_a_message_naming_it(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}/train.parquet"
    with pytest.raises(InputError, match=r"train\.parquet: unreachable after 3 attempts"):
        fetch_url(closed, tmp_path / "train.parquet", retries=2, backoff_s=0.01)
    assert not (tmp_path / "train.parquet").exists()


def test_a_missing_file_is_not_retried(server: FlakyServer, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="HTTP 404"):
        fetch_url(url(server).replace("data.jsonl", "nope.jsonl"), tmp_path / "x", backoff_s=0.01)
    assert len(server.requests) == 1


def test_file_urls_are_copied(tmp_path: Path) -> None:
    source = tmp_path / "src.jsonl"
    source.write_bytes(BODY)
    [fetched] = fetch_urls([source.as_uri()], tmp_path / "data")
    assert fetched.path.read_bytes() == BODY and fetched.sha256 == DIGEST
