"""In-cluster, the operator registers its webhook through the chart's Service, not a URL."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from cryptography import x509

from kaito.devcluster.controlplane import free_port
from kaito.operator.settings import Settings
from kaito.operator.webhook import ServiceWebhookServer, webhook_server


async def first_client_config(settings: Settings) -> dict[str, Any]:
    server = webhook_server(settings)

    async def review(*_: Any, **__: Any) -> Any:
        return {}

    configs = server(review)
    try:
        return dict(await anext(configs))
    finally:
        # Closing the generator stops the HTTPS server it started.
        await configs.aclose()  # type: ignore[attr-defined]


def test_a_service_setting_yields_a_service_reference_with_the_ca() -> None:
    port = free_port()
    settings = Settings(
        webhook_enabled=True,
        webhook_address="127.0.0.1",
        webhook_port=port,
        webhook_service="kaito-system/kaito-webhook",
    )
    assert isinstance(webhook_server(settings), ServiceWebhookServer)
    config = asyncio.run(first_client_config(settings))
    assert config["service"] == {"namespace": "kaito-system", "name": "kaito-webhook", "port": port}
    assert "url" not in config
    # The self-signed certificate names the Service's DNS name, which the apiserver checks.
    cert = x509.load_pem_x509_certificate(base64.b64decode(config["caBundle"]))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["kaito-webhook.kaito-system.svc"]


def test_without_a_service_the_apiserver_calls_the_host_override() -> None:
    settings = Settings(
        webhook_enabled=True,
        webhook_address="127.0.0.1",
        webhook_port=free_port(),
        webhook_host="127.0.0.1",
    )
    assert not isinstance(webhook_server(settings), ServiceWebhookServer)
    config = asyncio.run(first_client_config(settings))
    assert config["url"].startswith(f"https://127.0.0.1:{settings.webhook_port}")
