"""Admission: the API package's pure validation served through kopf's validating webhook."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import AsyncIterator, Mapping
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
# kopf names a handler's webhook entry <handler id>.<configuration name>; the chart's
# configuration uses the same name so that either may manage it.
WEBHOOK_HANDLER_ID = "workspace"
WEBHOOK_ENTRY = f"{WEBHOOK_HANDLER_ID}.{WEBHOOK_NAME}"
# The InferenceSet handler's id (kaito.operator.inferenceset.HANDLER_ID); that module imports
# this one, hence the literal. The chart registers both entries, so the CA goes into both.
INFERENCESET_ENTRY = f"inferenceset.{WEBHOOK_NAME}"
WEBHOOK_ENTRIES = [WEBHOOK_ENTRY, INFERENCESET_ENTRY]
log = logging.getLogger("kaito.operator")


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
        allowed_hosts=settings.cluster_options().tuning_allowed_hosts,
        limits=settings.limits(),
    )
    warnings = workspace_warnings(dict(body), cloud_provider=settings.cloud_provider)
    return [str(e) for e in errors], [str(w) for w in warnings]


class ServiceWebhookServer(kopf.WebhookServer):
    """kopf's server, but the apiserver reaches it through a Service (in-cluster installs).

    The apiserver resolves a `url` with its own DNS, which rarely knows cluster Services; a
    `service` reference is routed by the apiserver itself.
    """

    def __init__(self, *, service_namespace: str, service_name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.service_namespace = service_namespace
        self.service_name = service_name

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        async for config in super().__call__(fn):
            service = {
                "namespace": self.service_namespace,
                "name": self.service_name,
                "port": self.port,
            }
            yield {"service": service, "caBundle": config.get("caBundle")}


class CaPublisher:
    """Wraps a webhook server: each client config it yields (its CA) is written into the
    chart's ValidatingWebhookConfiguration before kopf sees it. Only the caBundle is patched;
    the configuration (failurePolicy Fail) stays registered when this process stops, so
    admission fails closed instead of falling back to the CRD's checks."""

    def __init__(self, server: kopf.WebhookServer, kube: Kube, configuration: str) -> None:
        self.server = server
        self.kube = kube
        self.configuration = configuration

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        async for config in self.server(fn):
            ca = config.get("caBundle")
            if ca:
                await self.kube.patch_webhook_ca(self.configuration, WEBHOOK_ENTRIES, ca)
                log.info("webhook CA written to %s", self.configuration)
            yield config


def webhook_server(settings: Settings) -> kopf.WebhookServer:
    """HTTPS server for the webhook: given certificates, or a self-signed one for the host."""
    service_namespace, _, service_name = settings.webhook_service.partition("/")
    host = settings.webhook_host or settings.webhook_address
    if service_name and not settings.webhook_host:
        host = f"{service_name}.{service_namespace}.svc"
    if settings.webhook_cert_dir:
        directory = Path(settings.webhook_cert_dir)
        cert, key = directory / "tls.crt", directory / "tls.key"
        ca = directory / "ca.crt"
        cafile = ca if ca.is_file() else cert
    else:
        cert, key = self_signed(Path(tempfile.mkdtemp(prefix="kaito-webhook-")), [host])
        cafile = cert
    if service_name:
        return ServiceWebhookServer(
            service_namespace=service_namespace,
            service_name=service_name,
            addr=settings.webhook_address,
            port=settings.webhook_port,
            host=host,
            certfile=str(cert),
            pkeyfile=str(key),
            cafile=str(cafile),
        )
    return kopf.WebhookServer(
        addr=settings.webhook_address,
        port=settings.webhook_port,
        host=host,
        certfile=str(cert),
        pkeyfile=str(key),
        cafile=str(cafile),
    )
