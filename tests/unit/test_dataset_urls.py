"""The dataset URL guard's pure parts: address kinds, numeric spellings, allowlist, redaction."""

from __future__ import annotations

import ipaddress

import pytest

from kaito.runtime.tuning.urls import (
    AllowList,
    BlockedURLError,
    address_problem,
    check_url,
    parse_numeric_host,
    redact_text,
    redact_url,
)


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("10.96.0.1", "private"),  # a typical Service CIDR
        ("10.244.1.7", "private"),  # a typical pod CIDR
        ("192.168.1.1", "private"),
        ("172.31.255.255", "private"),
        ("100.64.0.1", "non-global"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "private"),  # Python counts 240/4 among its private ranges
        ("0.0.0.0", "unspecified"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fd00:ec2::254", "private"),  # the AWS metadata service over IPv6
        ("::ffff:10.0.0.1", "private (inside ::ffff:a00:1)"),
        ("64:ff9b::a9fe:a9fe", "link-local (inside 64:ff9b::a9fe:a9fe)"),
        ("2002:a9fe:a9fe::", "link-local (inside 2002:a9fe:a9fe::)"),
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_each_internal_range_is_named_and_public_addresses_pass(
    address: str, kind: str | None
) -> None:
    assert address_problem(ipaddress.ip_address(address)) == kind


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2852039166", "169.254.169.254"),
        ("0xA9FEA9FE".lower(), "169.254.169.254"),
        ("0251.0376.0251.0376", "169.254.169.254"),
        ("169.254.43518", "169.254.169.254"),
        ("127.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("example.com", None),
        ("deadbeef", None),
        ("1e100.net", None),
    ],
)
def test_numeric_hosts_are_read_in_every_spelling_a_resolver_accepts(
    host: str, address: str | None
) -> None:
    parsed = parse_numeric_host(host)
    assert (str(parsed) if parsed else None) == address


def test_the_allowlist_takes_names_addresses_and_networks() -> None:
    allow = AllowList.parse([" Data.NS.svc. ", "10.1.2.3", "172.18.0.0/16", "[::1]", ""])
    assert allow.allows_name("data.ns.svc")
    assert allow.allows_address(ipaddress.ip_address("10.1.2.3"))
    assert not allow.allows_address(ipaddress.ip_address("10.1.2.4"))
    assert allow.allows_address(ipaddress.ip_address("172.18.9.9"))
    assert allow.allows_address(ipaddress.ip_address("::ffff:172.18.0.1"))
    assert allow.allows_address(ipaddress.ip_address("::1"))
    target = check_url("http://data.ns.svc:8000/x", allow, resolve=False)
    assert (target.host, target.port, target.path) == ("data.ns.svc", 8000, "/x")
    with pytest.raises(BlockedURLError, match="cluster-internal"):
        check_url("http://other.ns.svc/x", allow, resolve=False)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "https://user:pa55@host.example:8443/a/b.parquet?sv=1&sig=SECRET#sha256=ab",
            "https://REDACTED@host.example:8443/a/b.parquet?REDACTED#sha256=ab",
        ),
        ("https://host.example/x.jsonl", "https://host.example/x.jsonl"),
        ("http://[::1]:80/x?token=T", "http://[::1]:80/x?REDACTED"),
        ("https://host.example/x#secret-fragment", "https://host.example/x"),
        ("http://[bad/x?token=T", "<unparseable URL REDACTED>"),
    ],
)
def test_redaction_drops_user_info_query_and_fragments(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_urls_inside_text_are_redacted_and_the_rest_kept() -> None:
    text = "GET https://a:b@h.example/f?sig=S failed (https://h.example/g?t=T); retrying"
    assert redact_text(text) == (
        "GET https://REDACTED@h.example/f?REDACTED failed (https://h.example/g?REDACTED); retrying"
    )
