"""Models download from a Hugging Face-style hub (a local server in the hub's URL layout)."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kaito.runtime.hub import HubError, download_from_hub

REPO = "acme/tiny-llm"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_secret"


@dataclass
class Hub:
    endpoint: str
    files: dict[str, bytes]
    served: dict[str, bytes]  # what the server sends; differs from `files` to fake corruption
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, Range header)


@pytest.fixture
def hub() -> Iterator[Hub]:
    files = {
        "config.json": b'{"model_type": "llama"}',
        "model.safetensors": bytes(range(256)) * 4096,
        "original/consolidated.pth": b"upstream excludes this",
        "tokenizer.json": b'{"version": "1.0"}',
    }
    state = Hub("", files, dict(files))

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            return None

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            state.requests.append((self.path, self.headers.get("Range", "")))
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._send(401, b'{"error": "Invalid credentials"}')
                return
            path = self.path.split("?")[0]
            if path in (
                f"/api/models/{REPO}/revision/main",
                f"/api/models/{REPO}/revision/{COMMIT}",
            ):
                siblings = [
                    {"rfilename": name}
                    | (
                        {"lfs": {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}}
                        if name.endswith(".safetensors")
                        else {}
                    )
                    for name, data in state.files.items()
                ]
                self._send(200, json.dumps({"sha": COMMIT, "siblings": siblings}).encode())
                return
            prefix = f"/{REPO}/resolve/{COMMIT}/"
            name = path[len(prefix) :]
            if not path.startswith(prefix) or name not in state.served:
                self._send(404, b"not found")
                return
            body = state.served[name]
            ranged = self.headers.get("Range", "")
            if ranged.startswith("bytes="):
                start = int(ranged[6:].split("-")[0])
                self._send(206, body[start:], {"Content-Range": f"bytes {start}-/{len(body)}"})
                return
            self._send(200, body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # shutdown() waits out one poll of serve_forever: 0.5 s a test at the default.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    state.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def test_a_model_downloads_at_the_commit_its_revision_resolves_to_with_the_env_token(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    done = download_from_hub(REPO, tmp_path, endpoint=hub.endpoint)
    assert done.revision == COMMIT
    assert sorted(p.relative_to(tmp_path).as_posix() for p in done.files) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    for path in done.files:
        assert path.read_bytes() == hub.files[path.relative_to(tmp_path).as_posix()]
    resolved = [p for p, _ in hub.requests if "/resolve/" in p]
    assert resolved and all(f"/resolve/{COMMIT}/" in p for p in resolved)


def test_a_gated_model_without_a_token_is_refused_with_the_hubs_status(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(HubError, match="HTTP 401"):
        download_from_hub(REPO, tmp_path, endpoint=hub.endpoint)


def test_a_given_file_list_skips_the_listing_api(hub: Hub, tmp_path: Path) -> None:
    done = download_from_hub(
        REPO, tmp_path, revision=COMMIT, files=["config.json"], endpoint=hub.endpoint, token=TOKEN
    )
    assert [p.name for p in done.files] == ["config.json"]
    assert not any(p.startswith("/api/") for p, _ in hub.requests)


def test_a_file_that_does_not_match_its_lfs_digest_is_rejected(hub: Hub, tmp_path: Path) -> None:
    hub.served["model.safetensors"] = b"tampered" * 1000
    with pytest.raises(HubError, match="sha256 mismatch"):
        download_from_hub(REPO, tmp_path, endpoint=hub.endpoint, token=TOKEN, attempts=1)
    assert not (tmp_path / "model.safetensors").exists()


def test_an_interrupted_download_resumes_with_a_range_request(hub: Hub, tmp_path: Path) -> None:
    data = hub.files["model.safetensors"]
    (tmp_path / "model.safetensors.incomplete").write_bytes(data[:300_000])
    done = download_from_hub(
        REPO,
        tmp_path,
        revision=COMMIT,
        files=["model.safetensors"],
        endpoint=hub.endpoint,
        token=TOKEN,
    )
    assert (tmp_path / "model.safetensors").read_bytes() == data
    assert done.downloaded_bytes == len(data) - 300_000
    assert ("/" + REPO + f"/resolve/{COMMIT}/model.safetensors", "bytes=300000-") in hub.requests


def test_kaito_models_download_fetches_a_pinned_revision_with_the_env_token(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from kaito.cli.main import app

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    result = CliRunner().invoke(
        app, ["models", "download", REPO, str(tmp_path), "--endpoint", hub.endpoint]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["revision"] == COMMIT
    assert (tmp_path / "model.safetensors").read_bytes() == hub.files["model.safetensors"]
    monkeypatch.delenv("HF_TOKEN")
    refused = CliRunner().invoke(
        app, ["models", "download", REPO, str(tmp_path / "x"), "--endpoint", hub.endpoint]
    )
    assert refused.exit_code == 1
