"""Admission: the API package's pure validation served through kopf's validating webhook."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kopf
from pydantic import ValidationError

from kaito.api.workspace import parse_workspace
from kaito.k8s.client import Kube
from kaito.operator.certs import self_signed
from kaito.operator.settings import Settings
from kaito.presets.validation import (
    default_config_maps,
    validate_workspace,
    workspace_warnings,
)
from kaito.reconcile.observed import wanted_config_maps

WEBHOOK_NAME = "validation.workspace.kaito.sh"


async def admission_errors(
    kube: Kube, settings: Settings, body: Mapping[str, Any], old: Mapping[str, Any] | None
) -> tuple[list[str], list[str]]:
    """(errors, warnings) for a Workspace body; ConfigMaps are read first, then checked purely."""
    lookups: dict[tuple[str, str], Mapping[str, str] | None] = {}
    try:
        workspace = parse_workspace(dict(body))
    except ValidationError:
        workspace = None
    if workspace is not None:
        options = settings.cluster_options()
        for namespace, name in wanted_config_maps(workspace, options):
            lookups[(namespace, name)] = await kube.config_map_data(namespace, name)

    packaged = default_config_maps()

    def lookup(namespace: str, name: str) -> Mapping[str, str] | None:
        found = lookups.get((namespace, name))
        if found is None and namespace == settings.release_namespace:
            # The operator copies its packaged template when the release namespace has none.
            return packaged.get(name)
        return found

    errors = validate_workspace(
        dict(body),
        old=dict(old) if old else None,
        cloud_provider=settings.cloud_provider,
        config_map_lookup=lookup if workspace is not None else None,
        release_namespace=settings.release_namespace,
        vllm_enabled=settings.feature_vllm,
    )
    warnings = workspace_warnings(dict(body), cloud_provider=settings.cloud_provider)
    return [str(e) for e in errors], [str(w) for w in warnings]


def webhook_server(settings: Settings) -> kopf.WebhookServer:
    """HTTPS server for the webhook: given certificates, or a self-signed one for the host."""
    host = settings.webhook_host or settings.webhook_address
    if settings.webhook_cert_dir:
        directory = Path(settings.webhook_cert_dir)
        cert, key = directory / "tls.crt", directory / "tls.key"
        ca = directory / "ca.crt"
        cafile = ca if ca.is_file() else cert
    else:
        cert, key = self_signed(Path(tempfile.mkdtemp(prefix="kaito-webhook-")), [host])
        cafile = cert
    return kopf.WebhookServer(
        addr=settings.webhook_address,
        port=settings.webhook_port,
        host=host,
        certfile=str(cert),
        pkeyfile=str(key),
        cafile=str(cafile),
    )
