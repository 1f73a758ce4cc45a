"""URL inputs: only public http(s) targets, every hop checked before it is connected, capped
in size and time, safe file names, secrets redacted; retries, resume and checksums."""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kaito.runtime.tuning.inputs import (
    DownloadPolicy,
    InputError,
    fetch_url,
    fetch_urls,
    file_names_for,
    read_inputs,
)
from kaito.runtime.tuning.urls import ALLOWED_HOSTS_ENV, AllowList
from tests.support.registry import free_port

BODY = bytes(range(256)) * 400  # 100 KiB
# The test servers run on loopback, which downloads refuse unless an operator allows it.
LOOPBACK = DownloadPolicy(AllowList.parse(["127.0.0.1"]))
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
        path = self.path.split("?")[0]
        if path == "/redirect":
            self.send_response(302)
            self.send_header("Location", self.path.split("?to=", 1)[1])
            self.end_headers()
            return
        if path == "/slow.jsonl":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            for start in range(0, len(BODY), 1024):
                self.wfile.write(BODY[start : start + 1024])
                self.wfile.flush()
                time.sleep(0.05)
            return
        if path not in ("/data.jsonl", "/other/data.jsonl"):
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
    # shutdown() waits out one poll of serve_forever: 0.5 s a test at the default.
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def url(server: FlakyServer, suffix: str = "") -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/data.jsonl{suffix}"


def test_a_download_lands_under_its_basename_with_its_digest_recorded(
    server: FlakyServer, tmp_path: Path
) -> None:
    [fetched] = fetch_urls([url(server, "?download=true")], tmp_path, policy=LOOPBACK)
    assert fetched.path == tmp_path / "data.jsonl"
    assert fetched.path.read_bytes() == BODY
    assert fetched.sha256 == DIGEST
    assert read_inputs(tmp_path) == [fetched.to_json()]


def test_transient_server_errors_are_retried(server: FlakyServer, tmp_path: Path) -> None:
    server.failures = 2
    fetched = fetch_url(url(server), tmp_path / "d.jsonl", backoff_s=0.01, policy=LOOPBACK)
    assert fetched.path.read_bytes() == BODY
    assert len(server.requests) == 3


def test_a_cut_download_resumes_with_a_range_request(server: FlakyServer, tmp_path: Path) -> None:
    server.cut_first_body = True
    fetched = fetch_url(url(server), tmp_path / "d.jsonl", backoff_s=0.01, policy=LOOPBACK)
    assert fetched.path.read_bytes() == BODY
    assert server.requests[0] is None
    assert server.requests[1] is not None and server.requests[1].startswith("bytes=")
    assert not any(p.name.endswith(".part") for p in tmp_path.iterdir())


def test_a_pinned_checksum_that_does_not_match_fails_and_keeps_nothing(
    server: FlakyServer, tmp_path: Path
) -> None:
    with pytest.raises(InputError, match="checksum mismatch"):
        fetch_url(url(server, "#sha256=" + "0" * 64), tmp_path / "d.jsonl", policy=LOOPBACK)
    assert list(tmp_path.iterdir()) == []
    pinned = url(server, "#sha256=" + DIGEST.split(":")[1])
    ok = fetch_url(pinned, tmp_path / "d.jsonl", policy=LOOPBACK)
    assert ok.sha256 == DIGEST


def test_an_unreachable_url_fails_with_a_message_naming_it(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}/train.parquet"
    with pytest.raises(InputError, match=r"train\.parquet: unreachable after 3 attempts"):
        fetch_url(closed, tmp_path / "train.parquet", retries=2, backoff_s=0.01, policy=LOOPBACK)
    assert not (tmp_path / "train.parquet").exists()


def test_a_missing_file_is_not_retried(server: FlakyServer, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="HTTP 404"):
        fetch_url(url(server, "x").replace("data.jsonlx", "nope"), tmp_path / "x", policy=LOOPBACK)
    assert len(server.requests) == 1


def test_file_urls_are_refused(tmp_path: Path) -> None:
    source = tmp_path / "token"
    source.write_text("secret")
    with pytest.raises(InputError, match="scheme 'file' is not allowed"):
        fetch_urls([source.as_uri()], tmp_path / "data", policy=LOOPBACK)
    assert not (tmp_path / "data" / "token").exists()


# Where downloads may go


def test_a_redirect_to_the_metadata_address_is_refused_before_any_connection(
    server: FlakyServer, tmp_path: Path
) -> None:
    # The network guard (tests/conftest.py) raises NetworkGuardError, not InputError, for
    # any connection or lookup beyond loopback: the refusal must come from the address check.
    start = url(server).replace("/data.jsonl", "/redirect?to=http://169.254.169.254/latest/")
    with pytest.raises(InputError, match=r"169\.254\.169\.254 is a link-local address"):
        fetch_url(start, tmp_path / "d.jsonl", backoff_s=0.01, policy=LOOPBACK)
    assert len(server.requests) == 1, "refused at once, not retried"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://2852039166/", "169.254.169.254 is a link-local"),  # decimal
        ("http://0xa9fea9fe/", "169.254.169.254 is a link-local"),  # hex
        ("http://0251.0376.0251.0376/", "169.254.169.254 is a link-local"),  # octal
        ("http://10.1/", "10.0.0.1 is a private"),  # short form
        ("http://[::ffff:169.254.169.254]/", "link-local"),
        ("http://[::ffff:a9fe:a9fe]/", "link-local"),
        ("http://[64:ff9b::a9fe:a9fe]/", "link-local"),  # NAT64
        ("http://[fe80::1%25eth0]/", "link-local"),
        ("http://[::1]:8080/", "loopback"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://100.64.0.10/", "non-global"),  # shared address space (CGNAT)
        ("http://kubernetes.default.svc/", "cluster-internal name"),
        ("http://data.team-a.svc.cluster.local./x", "cluster-internal name"),
        ("http://metadata.google.internal/", "cluster-internal name"),
        ("http://localhost:9000/", "cluster-internal name"),
        ("http://my-service/", "single-label host"),
        ("ftp://example.com/data.jsonl", "scheme 'ftp' is not allowed"),
        ("gopher://example.com/", "scheme 'gopher' is not allowed"),
    ],
)
def test_internal_targets_are_refused_without_resolving_them(
    server: FlakyServer, tmp_path: Path, target: str, reason: str
) -> None:
    with pytest.raises(InputError, match=reason):
        fetch_url(target, tmp_path / "d", policy=LOOPBACK)
    start = url(server).replace("/data.jsonl", f"/redirect?to={target}")
    with pytest.raises(InputError, match=reason):
        fetch_url(start, tmp_path / "d", policy=LOOPBACK)


def test_loopback_is_refused_unless_the_operator_allows_it(
    server: FlakyServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ALLOWED_HOSTS_ENV, raising=False)
    with pytest.raises(InputError, match=r"127\.0\.0\.1 is a loopback address"):
        fetch_url(url(server), tmp_path / "d.jsonl")
    assert server.requests == []
    monkeypatch.setenv(ALLOWED_HOSTS_ENV, "data.example.com, 127.0.0.0/8")
    assert fetch_url(url(server), tmp_path / "d.jsonl").sha256 == DIGEST


def test_local_mode_may_reach_this_machine_and_nothing_else_internal(
    server: FlakyServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ALLOWED_HOSTS_ENV, raising=False)
    local = DownloadPolicy.on_this_machine()
    assert fetch_url(url(server), tmp_path / "d.jsonl", policy=local).sha256 == DIGEST
    metadata = url(server).replace("/data.jsonl", "/redirect?to=http://169.254.169.254/")
    for refused in (metadata, "http://10.0.0.1/x", "http://kubernetes.default.svc/"):
        with pytest.raises(InputError, match=r"link-local|private|cluster-internal"):
            fetch_url(refused, tmp_path / "x", policy=local)


def test_the_connection_goes_to_the_address_that_was_checked(
    server: FlakyServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rebinding resolver: the first answer is the (allowed) loopback server, every later
    # answer the metadata address. One lookup, then a connection to what it answered.
    real = socket.getaddrinfo
    lookups: list[str] = []

    def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "data.example.com.":
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        answer = "127.0.0.1" if len(lookups) == 1 else "169.254.169.254"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answer, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    port = server.server_address[1]
    fetched = fetch_url(
        f"http://data.example.com:{port}/data.jsonl", tmp_path / "d", policy=LOOPBACK
    )
    assert fetched.sha256 == DIGEST
    assert lookups == ["data.example.com."]


def test_a_name_that_does_not_resolve_yet_is_tried_again(
    server: FlakyServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DNS in a pod that just started can lag; a failed lookup is retried like a 503.
    real = socket.getaddrinfo
    lookups: list[str] = []

    def lagging(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "data.example.com.":
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        if len(lookups) == 1:
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(socket, "getaddrinfo", lagging)
    port = server.server_address[1]
    source = f"http://data.example.com:{port}/data.jsonl"
    fetched = fetch_url(source, tmp_path / "d", backoff_s=0.01, policy=LOOPBACK)
    assert fetched.sha256 == DIGEST and len(lookups) == 2


# Limits


def test_a_body_over_the_size_cap_fails_and_keeps_nothing(
    server: FlakyServer, tmp_path: Path
) -> None:
    exact = DownloadPolicy(LOOPBACK.allow, max_bytes=len(BODY))
    assert fetch_url(url(server), tmp_path / "d.jsonl", policy=exact).size == len(BODY)
    over = DownloadPolicy(LOOPBACK.allow, max_bytes=len(BODY) - 1)
    with pytest.raises(InputError, match="over the 102399 byte download limit"):
        fetch_url(url(server), tmp_path / "e.jsonl", policy=over)
    assert not (tmp_path / "e.jsonl").exists()
    assert not (tmp_path / ".e.jsonl.part").exists()


def test_the_size_cap_counts_every_file_of_one_call(server: FlakyServer, tmp_path: Path) -> None:
    two = [url(server), url(server).replace("/data.jsonl", "/other/data.jsonl")]
    policy = DownloadPolicy(LOOPBACK.allow, max_bytes=2 * len(BODY) - 1)
    with pytest.raises(InputError, match="download limit"):
        fetch_urls(two, tmp_path / "a", policy=policy)
    policy = DownloadPolicy(LOOPBACK.allow, max_bytes=2 * len(BODY))
    assert len(fetch_urls(two, tmp_path / "b", policy=policy)) == 2


def test_a_server_that_trickles_is_cut_at_the_total_deadline(
    server: FlakyServer, tmp_path: Path
) -> None:
    slow = url(server).replace("/data.jsonl", "/slow.jsonl")  # 100 x 50 ms = 5 s
    policy = DownloadPolicy(LOOPBACK.allow, deadline_s=0.5)
    started = time.monotonic()
    with pytest.raises(InputError, match=r"not done within the 0\.5 s deadline"):
        fetch_url(slow, tmp_path / "s.jsonl", backoff_s=0.01, policy=policy)
    assert time.monotonic() - started < 2.0
    assert list(tmp_path.iterdir()) == []


# File names


def test_file_names_stay_in_the_data_directory_and_never_collide() -> None:
    names = file_names_for(
        [
            "https://h.example/a/train.parquet?sig=1",
            "https://h.example/b/train.parquet?sig=2",
            "https://h.example/x/..%2F..%2Fetc%2Fpasswd",
            "https://h.example/x/%2e%2e",
            "https://h.example/.kaito-inputs.json",
            "https://h.example/x/a%5C..%5Cb.jsonl",
            "https://h.example/",
            "https://h.example/TRAIN.parquet",
        ]
    )
    assert names == [
        "train.parquet",
        "train-1.parquet",
        "passwd",
        "download-3",
        "kaito-inputs.json",
        "b.jsonl",
        "download-6",
        "TRAIN-7.parquet",
    ]


def test_two_urls_with_one_basename_both_land(server: FlakyServer, tmp_path: Path) -> None:
    two = [url(server), url(server).replace("/data.jsonl", "/other/data.jsonl")]
    fetched = fetch_urls(two, tmp_path, policy=LOOPBACK)
    assert [f.path.name for f in fetched] == ["data.jsonl", "data-1.jsonl"]
    assert all(f.path.read_bytes() == BODY for f in fetched)


# Secrets in URLs


def test_credentials_in_a_url_appear_in_no_error_and_no_record(
    server: FlakyServer, tmp_path: Path
) -> None:
    port = server.server_address[1]
    secret = f"http://alice:hunter2@127.0.0.1:{port}/nope.jsonl?sig=SAS-SECRET&se=2030"
    with pytest.raises(InputError) as refused:
        fetch_url(secret, tmp_path / "x", policy=LOOPBACK)
    message = str(refused.value)
    assert "HTTP 404" in message and "nope.jsonl" in message
    assert "hunter2" not in message and "SAS-SECRET" not in message and "alice" not in message
    good = f"http://alice:hunter2@127.0.0.1:{port}/data.jsonl?sig=SAS-SECRET"
    [fetched] = fetch_urls([good], tmp_path / "data", policy=LOOPBACK)
    recorded = json.dumps(read_inputs(tmp_path / "data"))
    for text in (fetched.source, recorded):
        assert "SAS-SECRET" not in text and "hunter2" not in text
    assert fetched.source == f"http://REDACTED@127.0.0.1:{port}/data.jsonl?REDACTED"


def test_the_termination_log_of_a_failed_download_carries_no_url_secret(
    server: FlakyServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kaito.runtime.tuning.cli import main

    monkeypatch.setenv(ALLOWED_HOSTS_ENV, "127.0.0.1")
    port = server.server_address[1]
    secret = f"http://bob:pw-1@127.0.0.1:{port}/gone.jsonl?sig=SAS-SECRET"
    log = tmp_path / "termination-log"
    argv = ["--url", secret, "--dataset-dir", str(tmp_path / "d"), "--check"]
    assert main([*argv, "--termination-log", str(log)]) == 2
    result = json.loads(log.read_text())
    assert "HTTP 404" in result["error"] and "gone.jsonl" in result["error"]
    assert "SAS-SECRET" not in log.read_text() and "pw-1" not in log.read_text()
