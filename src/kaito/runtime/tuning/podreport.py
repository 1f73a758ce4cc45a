"""Publish progress.json as an annotation on the tuning pod itself, for the operator to read.

The pod writes only its own metadata, with its own service-account token: no permission on
Workspaces. Reports are throttled (at most one per `min_interval_s`, plus every phase change)
so a fast training loop does not hammer the API server; a failed report is dropped, never
fatal to training. Every string is redacted first (`urls.redact_text`): a message that
quotes a dataset URL must not carry its signature or password onto the pod, where anyone
who can read pods (and the operator's status and Events) would see it.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kaito.contract.progress import ANNOTATION
from kaito.runtime.tuning.urls import redact_report

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MIN_INTERVAL_S = 5.0


def patch_body(document: dict[str, Any]) -> dict[str, Any]:
    """The merge patch that carries `document`, every string in it redacted."""
    report = json.dumps(redact_report(document), sort_keys=True)
    return {"metadata": {"annotations": {ANNOTATION: report}}}


@dataclass
class PodAnnotator:
    """PATCHes `metadata.annotations[kaito.sh/tuning-progress]` of one pod."""

    host: str
    port: int
    namespace: str
    pod: str
    token_file: Path
    ca_file: Path
    min_interval_s: float = MIN_INTERVAL_S
    _last_sent: float = field(default=-1e9, repr=False)
    _last_phase: str | None = field(default=None, repr=False)
    _warned: bool = field(default=False, repr=False)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> PodAnnotator | None:
        """In a pod with POD_NAME/POD_NAMESPACE (downward API) and a mounted token; else None."""
        env = dict(os.environ if environ is None else environ)
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
        pod, namespace = env.get("POD_NAME"), env.get("POD_NAMESPACE")
        token, ca = SERVICE_ACCOUNT_DIR / "token", SERVICE_ACCOUNT_DIR / "ca.crt"
        if not (host and port and pod and namespace and token.is_file() and ca.is_file()):
            return None
        return cls(host, int(port), namespace, pod, token, ca)

    def publish(self, document: dict[str, Any], *, now: float | None = None) -> bool:
        """Send `document` unless one was sent less than `min_interval_s` ago in the same
        phase; True when the API server took it."""
        moment = time.monotonic() if now is None else now
        phase = document.get("phase")
        if phase == self._last_phase and moment - self._last_sent < self.min_interval_s:
            return False
        self._last_sent, self._last_phase = moment, phase
        try:
            self._patch(patch_body(document))
        except (OSError, http.client.HTTPException, RuntimeError) as exc:
            if not self._warned:
                self._warned = True
                print(
                    f"progress annotation not written (later ones are tried): {exc}",
                    file=sys.stderr,
                )
            return False
        return True

    def _patch(self, body: dict[str, Any]) -> None:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        # Projected tokens rotate: read the file for every request.
        token = self.token_file.read_text(encoding="utf-8").strip()
        connection = http.client.HTTPSConnection(self.host, self.port, context=context, timeout=10)
        try:
            connection.request(
                "PATCH",
                f"/api/v1/namespaces/{self.namespace}/pods/{self.pod}",
                body=json.dumps(body),
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/merge-patch+json",
                    "Accept": "application/json",
                },
            )
            response = connection.getresponse()
            response.read()
        finally:
            connection.close()
        if not 200 <= response.status < 300:
            raise RuntimeError(f"PATCH pod {self.namespace}/{self.pod}: HTTP {response.status}")
