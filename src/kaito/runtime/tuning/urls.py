"""Which dataset URLs a tuning pod may fetch (SSRF guard), and URLs made safe to report.

The guard decides on the address a name resolves to, before any connection: loopback,
link-local (cloud metadata), private, shared (CGNAT), multicast and reserved ranges are
refused, IPv4 hidden in IPv6 forms (mapped, NAT64, 6to4, Teredo) is unwrapped first, and
numeric hosts in any spelling `inet_aton` accepts (`2852039166`, `0xa9fea9fe`) are read as
the address they are. Cluster names (`*.svc`, `*.cluster.local`, single labels that the pod's
search path would complete) are refused by name. An allowlist of host names, addresses or
networks (`KAITO_TUNING_ALLOWED_HOSTS`) admits internal servers an operator trusts.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit, urlunsplit

from kaito.contract.files import TUNING_ALLOWED_HOSTS_ENV

ALLOWED_HOSTS_ENV = TUNING_ALLOWED_HOSTS_ENV
MAX_BYTES_ENV = "KAITO_TUNING_MAX_DOWNLOAD_BYTES"
DEADLINE_ENV = "KAITO_TUNING_DOWNLOAD_DEADLINE_SECONDS"
DEFAULT_MAX_BYTES = 50 << 30
DEFAULT_DEADLINE_S = 4 * 3600.0
SCHEMES = ("http", "https")
REDACTED = "REDACTED"
# Names the pod's resolver completes to cluster Services, or that only exist inside a cloud.
INTERNAL_SUFFIXES = (".svc", ".cluster.local", ".local", ".localhost", ".internal", ".localdomain")
INTERNAL_NAMES = {"localhost", "metadata", "kubernetes"}
_HOST_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*\.?$")
_URL_IN_TEXT = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class BlockedURLError(ValueError):
    """A URL names a scheme, host or address that dataset downloads may not reach."""


class HostLookupError(BlockedURLError):
    """The host name did not resolve (maybe for now: DNS in a starting pod can lag)."""


def redact_url(url: str) -> str:
    """`url` without user info, query or fragment values: safe for logs, status and Events.

    Signed URLs (SAS, S3 presigned) carry their secret in the query and basic-auth URLs in
    the user info; the path stays, so the message still says which file failed.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return f"<unparseable URL {REDACTED}>"
    if ":" in host:
        host = f"[{host}]"
    netloc = (f"{REDACTED}@" if "@" in parts.netloc else "") + host
    if port is not None:
        netloc += f":{port}"
    query = REDACTED if parts.query else ""
    fragment = parts.fragment if parts.fragment.startswith("sha256=") else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def redact_text(text: str) -> str:
    """Every URL inside free text redacted (exception messages that quote a URL)."""

    def one(match: re.Match[str]) -> str:
        # Sentence punctuation after a URL (`<url>: HTTP 404`) is not part of it.
        found = match.group(0)
        url = found.rstrip(".,;:)]}")
        return redact_url(url) + found[len(url) :]

    return _URL_IN_TEXT.sub(one, text)


def redact_document(value: object) -> object:
    """A JSON-like document with every string redacted (reports that leave the pod)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {key: redact_document(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_document(item) for item in value]
    return value


def redact_report(document: Mapping[str, object]) -> dict[str, object]:
    """`redact_document` for a report's top-level mapping, typed as one."""
    return {key: redact_document(item) for key, item in document.items()}


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries (mapped, NAT64, 6to4, Teredo), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    # ::a.b.c.d (deprecated IPv4-compatible) still routes to IPv4 on some stacks.
    if int(address) >> 32 == 0 and int(address) > 1:
        return ipaddress.IPv4Address(int(address))
    return None


def address_problem(address: IPAddress) -> str | None:
    """Why `address` is internal (the range's kind), or None when it is a public address."""
    inner = embedded_ipv4(address)
    if inner is not None:
        found = address_problem(inner)
        return f"{found} (inside {address})" if found else None
    checks = (
        ("loopback", address.is_loopback),
        ("unspecified", address.is_unspecified),
        ("link-local", address.is_link_local),
        ("private", address.is_private),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
    )
    for kind, hit in checks:
        if hit:
            return kind
    return None if address.is_global else "non-global"


def parse_numeric_host(host: str) -> IPAddress | None:
    """The address a numeric host names in any spelling a resolver accepts, else None."""
    bare = host.strip("[]")
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    # Decimal, hex, octal and short dotted forms: inet_aton parses them without DNS.
    if re.fullmatch(r"[0-9a-fx.]+", bare) and not bare.endswith(".."):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(bare.rstrip(".")))
        except OSError:
            return None
    return None


@dataclass(frozen=True)
class AllowList:
    """Host names, addresses and networks an operator trusts (e.g. an in-cluster data server)."""

    names: frozenset[str] = frozenset()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        """Entries like `data.example.svc`, `10.0.0.7`, `172.18.0.0/16`, `[::1]`."""
        names, networks = set(), []
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                names.add(entry.rstrip("."))
        return cls(frozenset(names), tuple(networks))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AllowList:
        env = os.environ if environ is None else environ
        return cls.parse(env.get(ALLOWED_HOSTS_ENV, "").split(","))

    def allows_name(self, host: str) -> bool:
        return host.rstrip(".") in self.names

    def allows_address(self, address: IPAddress) -> bool:
        candidates = [address, *filter(None, [embedded_ipv4(address)])]
        return any(
            a in net for a in candidates for net in self.networks if a.version == net.version
        )


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (the checked addresses) and what to call the host."""

    url: str
    scheme: str
    host: str  # for the Host header and TLS server name
    port: int
    path: str  # path and query, as sent in the request line
    addresses: tuple[str, ...]


def _split(url: str) -> tuple[SplitResult, str, int]:
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError as exc:
        raise BlockedURLError(f"{redact_url(url)}: not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise BlockedURLError(
            f"{redact_url(url)}: scheme {scheme or '(none)'!r} is not allowed (http, https)"
        )
    if not host:
        raise BlockedURLError(f"{redact_url(url)}: no host")
    if port == 0:
        raise BlockedURLError(f"{redact_url(url)}: port 0")
    return parts, host, port or (443 if scheme == "https" else 80)


def check_url(
    url: str,
    allow: AllowList,
    resolve: bool = True,
) -> Target:
    """Check `url` and the addresses its host resolves to (once); refuse internal targets.

    The returned addresses are the ones to connect to: connecting to them, not to the name,
    is what keeps a second DNS answer (rebinding) from reaching an internal address.
    `resolve=False` checks only what the URL itself says (no DNS), for validation.
    """
    parts, host, port = _split(url)
    shown = redact_url(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    scheme = parts.scheme.lower()
    numeric = parse_numeric_host(host)
    if numeric is not None:
        problem = None if allow.allows_address(numeric) else address_problem(numeric)
        if problem:
            raise BlockedURLError(f"{shown}: {numeric} is a {problem} address")
        literal = str(numeric).split("%")[0]
        return Target(url, scheme, host, port, path, (literal,))
    try:
        name = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise BlockedURLError(f"{shown}: host is not a valid name") from None
    if not _HOST_NAME.fullmatch(name):
        raise BlockedURLError(f"{shown}: host is not a valid name")
    trusted = allow.allows_name(name)
    bare = name.rstrip(".")
    if not trusted:
        if bare in INTERNAL_NAMES or bare.endswith(INTERNAL_SUFFIXES):
            raise BlockedURLError(f"{shown}: {bare} is a cluster-internal name")
        if "." not in bare:
            raise BlockedURLError(
                f"{shown}: single-label host {bare!r} would resolve through the cluster's "
                "search domains; use a fully qualified name"
            )
    if not resolve:
        return Target(url, scheme, host, port, path, ())
    # A trailing dot makes the name absolute: the pod's search domains (ndots:5) are not
    # tried first, so no cluster name can stand in for a public one.
    query_name = name if trusted else bare + "."
    try:
        infos = socket.getaddrinfo(query_name, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise HostLookupError(f"{shown}: cannot resolve {bare} ({exc.strerror})") from None
    addresses: list[str] = []
    for family, _, _, _, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if not trusted and not allow.allows_address(address):
            problem = address_problem(address)
            if problem:
                raise BlockedURLError(f"{shown}: {bare} resolves to {address}, a {problem} address")
        if str(address) not in addresses:
            addresses.append(str(address))
    if not addresses:
        raise BlockedURLError(f"{shown}: {bare} has no IPv4 or IPv6 address")
    return Target(url, scheme, host, port, path, tuple(addresses))
