"""Certificates and keys for a throw-away control plane, generated with `cryptography`."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Long enough that a `kaito dev cluster up` left running for weeks keeps working.
VALIDITY = dt.timedelta(days=365)


@dataclass(frozen=True)
class CertPair:
    """PEM paths of one certificate and its private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class ClusterPKI:
    """Everything the components and clients need to authenticate each other."""

    ca: CertPair
    apiserver: CertPair
    sa_public_key: Path
    sa_private_key: Path
    clients: dict[str, CertPair]


KUBELET_CLIENT_USER = "kube-apiserver-kubelet-client"
FRONT_PROXY_CLIENT_USER = "front-proxy-client"

# Identities the bootstrap RBAC policy already binds; kwok and tests act as cluster admin.
CLIENT_IDENTITIES: dict[str, tuple[str, list[str]]] = {
    "admin": ("kaito-admin", ["system:masters"]),
    "kube-controller-manager": ("system:kube-controller-manager", []),
    "kube-scheduler": ("system:kube-scheduler", []),
    "kwok": ("kwok-controller", ["system:masters"]),
    # The apiserver's identity towards kubelets (logs, exec, port-forward); bound to the
    # bootstrap role system:kubelet-api-admin when a real node joins.
    "kubelet-client": (KUBELET_CLIENT_USER, []),
    # The aggregation layer's identity towards extension apiservers (metrics-server), which
    # trust its X-Remote-User headers only from this name (--requestheader-allowed-names).
    "front-proxy-client": (FRONT_PROXY_CLIENT_USER, []),
}


def _ec_key() -> ec.EllipticCurvePrivateKey:
    # P-256 keeps generation in milliseconds, unlike RSA-2048, which matters per test session.
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(common_name: str, organizations: list[str] | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations or []]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        # Backdated so a clock that is a little behind still accepts fresh certificates.
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + VALIDITY)
    )


_CA_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
# Every name a client may use for the apiserver: loopback, the `kubernetes` Service (its
# ClusterIP and DNS names, what pods use).
APISERVER_SANS = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "127.0.0.1",
    "::1",
    "10.0.0.1",
)


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def issue_certificate(
    ca: CertPair,
    stem: Path,
    common_name: str,
    organizations: list[str] | None = None,
    *,
    server_names: Sequence[str] = (),
    client: bool = True,
) -> CertPair:
    """Sign a fresh key pair with the cluster CA; `stem`.crt/.key. Server auth when named."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = _ec_key()
    usages = []
    if server_names:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        _builder(_name(common_name, organizations), ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_san(n) for n in dict.fromkeys(server_names)]),
            critical=False,
        )
    pair = CertPair(stem.with_suffix(".crt"), stem.with_suffix(".key"))
    _write_cert(pair.cert, builder.sign(ca_key, hashes.SHA256()))
    _write_key(pair.key, key)
    return pair


def generate_pki(directory: Path, extra_server_names: Sequence[str] = ()) -> ClusterPKI:
    """Write a CA, the apiserver serving pair, client pairs and the service-account key pair.

    `extra_server_names` are further addresses the apiserver serves on (a real node's bridge).
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _ec_key()
    ca_name = _name("kaito-dev-ca")
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca = CertPair(directory / "ca.crt", directory / "ca.key")
    _write_cert(ca.cert, ca_cert)
    _write_key(ca.key, ca_key)

    apiserver = issue_certificate(
        ca,
        directory / "apiserver",
        "kube-apiserver",
        server_names=(*APISERVER_SANS, *extra_server_names),
        client=False,
    )
    clients = {
        stem: issue_certificate(ca, directory / stem, cn, groups)
        for stem, (cn, groups) in CLIENT_IDENTITIES.items()
    }

    # Service-account tokens are signed with RS256 by default, so this one key stays RSA.
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_private = directory / "sa.key"
    sa_public = directory / "sa.pub"
    _write_key(sa_private, sa_key)
    sa_public.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return ClusterPKI(
        ca=ca,
        apiserver=apiserver,
        sa_public_key=sa_public,
        sa_private_key=sa_private,
        clients=clients,
    )
