"""The runtime's OCI client: which registries it reaches over plain HTTP."""

from __future__ import annotations

import pytest

from kaito.runtime.oci.registry import (
    ImageReference,
    is_plain_http_registry,
    plain_http_listed,
    registry_client,
)

LISTED = "10.245.0.1:5000, mirror.internal, [fd00::1]:5000"


@pytest.mark.parametrize(
    ("registry", "plain"),
    [
        ("10.245.0.1:5000", True),  # exact host:port
        ("10.245.0.1:5001", False),  # just past: same host, another port
        ("10.245.0.1", False),  # the entry names a port, the registry none
        ("10.245.0.11:5000", False),  # a longer address is another host
        ("mirror.internal", True),  # an entry without a port matches any port
        ("mirror.internal:8443", True),
        ("MIRROR.internal:8443", True),  # host names are case-insensitive
        ("other.mirror.internal", False),
        ("mirror.internal.evil", False),
        ("[fd00::1]:5000", True),
        ("[fd00::1]:5001", False),
    ],
)
def test_a_registry_is_plain_http_only_when_listed(registry: str, plain: bool) -> None:
    assert plain_http_listed(registry, LISTED) is plain


def test_loopback_stays_plain_and_an_empty_list_adds_nothing() -> None:
    assert is_plain_http_registry("127.0.0.1:5000", {})
    assert not is_plain_http_registry("10.245.0.1:5000", {})
    env = {"KAITO_PLAIN_HTTP_REGISTRIES": "10.245.0.1:5000"}
    assert is_plain_http_registry("10.245.0.1:5000", env)
    assert not plain_http_listed("10.245.0.1:5000", "")


def test_the_client_follows_the_list_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    reference = ImageReference.parse("10.245.0.1:5000/adapters/small:1")
    assert registry_client(reference, None, None).prefix == "https"
    monkeypatch.setenv("KAITO_PLAIN_HTTP_REGISTRIES", "10.245.0.1:5000")
    assert registry_client(reference, None, None).prefix == "http"
    assert registry_client(reference, None, False).prefix == "https"  # explicit wins
    other = ImageReference.parse("10.245.0.1:5001/adapters/small:1")
    assert registry_client(other, None, None).prefix == "https"
