"""A small stdlib REST client for the dev control plane: enough for fixtures and helpers."""

from __future__ import annotations

import http.client
import json
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
JSON = dict[str, Any]
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
MERGE_PATCH_CONTENT_TYPE = "application/merge-patch+json"


class ApiError(RuntimeError):
    """The apiserver answered with a non-2xx status; `body` is its Status object when JSON."""

    def __init__(self, method: str, path: str, status: int, body: JSON | str) -> None:
        message = body.get("message", "") if isinstance(body, dict) else body
        super().__init__(f"{method} {path}: {status} {message}".strip())
        self.status = status
        self.body = body


@dataclass
class ApiClient:
    """Talks to https://<host>:<port> with a client certificate; one connection per call."""

    host: str
    port: int
    ca_file: Path
    cert_file: Path
    key_file: Path
    timeout_s: float = 30.0
    _resources: dict[tuple[str, str], tuple[str, bool]] = field(default_factory=dict, repr=False)

    @property
    def server(self) -> str:
        return f"https://{self.host}:{self.port}"

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> JSON:
        """Send one request; returns the decoded JSON body or raises `ApiError`."""
        if query:
            path = f"{path}?{urllib.parse.urlencode(query)}"
        payload: bytes | None = None
        headers = {"Accept": "application/json"}
        if body is not None:
            payload = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            headers["Content-Type"] = content_type
        connection = http.client.HTTPSConnection(
            self.host, self.port, context=self._context(), timeout=self.timeout_s
        )
        try:
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            raw = response.read().decode(errors="replace")
        finally:
            connection.close()
        try:
            decoded: Any = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            decoded = raw
        if not 200 <= response.status < 300:
            raise ApiError(method, path, response.status, decoded)
        return decoded if isinstance(decoded, dict) else {"raw": decoded}

    def get(self, path: str) -> JSON:
        return self.request("GET", path)

    def exists(self, path: str) -> bool:
        try:
            self.get(path)
        except ApiError as error:
            if error.status == 404:
                return False
            raise
        return True

    def resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        """Plural name and namespacedness of a kind, from discovery (refreshed on a miss)."""
        key = (api_version, kind)
        if key not in self._resources:
            base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
            for item in self.get(base).get("resources", []):
                if "/" not in item["name"]:
                    self._resources[(api_version, item["kind"])] = (
                        item["name"],
                        bool(item["namespaced"]),
                    )
        if key not in self._resources:
            raise KeyError(f"the apiserver does not serve {kind} in {api_version}")
        return self._resources[key]

    def path_for(self, obj: Mapping[str, Any], *, collection: bool = False) -> str:
        """REST path of an object (or of its collection) from apiVersion, kind and metadata."""
        api_version, kind = obj["apiVersion"], obj["kind"]
        plural, namespaced = self.resource(api_version, kind)
        metadata = obj.get("metadata", {})
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        if namespaced:
            base = f"{base}/namespaces/{metadata.get('namespace', 'default')}"
        path = f"{base}/{plural}"
        return path if collection else f"{path}/{metadata['name']}"

    def apply(self, obj: Mapping[str, Any], *, field_manager: str = "kaito-dev") -> JSON:
        """Server-side apply (create or update) with `force`, so fixtures are idempotent."""
        return self.request(
            "PATCH",
            self.path_for(obj),
            yaml.safe_dump(dict(obj)),
            query={"fieldManager": field_manager, "force": "true"},
            content_type=APPLY_CONTENT_TYPE,
        )

    def create(self, obj: Mapping[str, Any]) -> JSON:
        return self.request("POST", self.path_for(obj, collection=True), dict(obj))

    def delete(self, obj: Mapping[str, Any], *, propagation: str = "Background") -> None:
        try:
            self.request(
                "DELETE",
                self.path_for(obj),
                {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation},
            )
        except ApiError as error:
            if error.status != 404:
                raise

    def wait_for(
        self,
        probe: Callable[[], T | None],
        *,
        timeout_s: float = 60.0,
        interval_s: float = 0.2,
        what: str = "condition",
    ) -> T:
        """Poll `probe` until it returns something truthy; ApiError 404 counts as not yet."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                result = probe()
            except ApiError as error:
                if error.status != 404:
                    raise
                result = None
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
            time.sleep(interval_s)
