"""Suite-wide rules: tiers from folders, the loopback-only network guard, GPU skips."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kaito.devcluster.controlplane import SERVICE_CIDR
from kaito.devcluster.realnode import NODE_NETWORK

TIERS = ("unit", "runtime", "cluster", "e2e", "bench")
# The session control plane and its fixtures, shared by tests/cluster and tests/e2e (one instance).
pytest_plugins = ["tests.conftest_cluster"]
LOOPBACK_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}
# Besides loopback, tests may reach exactly what the test cluster creates on this machine: the
# real node's bridge and pod network, and the Service range kube-proxy routes.
CLUSTER_NETWORKS = (ipaddress.ip_network(NODE_NETWORK), ipaddress.ip_network(SERVICE_CIDR))

# Offline before any library is imported by a test: nothing may fetch from a model hub.
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


class NetworkGuardError(RuntimeError):
    """A test tried to reach an address beyond loopback and the test cluster's networks."""


def is_loopback_host(host: object) -> bool:
    if not isinstance(host, str):
        return False
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name.split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified


def is_cluster_host(host: object) -> bool:
    """An IPv4 address in the node bridge/pod network or the Service range of the test cluster."""
    if not isinstance(host, str):
        return False
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return False
    return any(address in network for network in CLUSTER_NETWORKS)


def is_allowed_host(host: object) -> bool:
    return is_loopback_host(host) or is_cluster_host(host)


def _guard_address(family: int, address: Any) -> None:
    if family == getattr(socket, "AF_UNIX", None):
        return
    host = address[0] if isinstance(address, tuple) and address else address
    if not is_allowed_host(host):
        raise NetworkGuardError(
            f"tests may only connect to loopback and the test cluster's networks; "
            f"refused {address!r}"
        )


def install_network_guard() -> Callable[[], None]:
    """Patch socket connect and name resolution; returns a function that undoes the patch."""
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> None:
        _guard_address(self.family, address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        _guard_address(self.family, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None and not is_allowed_host(host):
            raise NetworkGuardError(f"tests may only resolve loopback names; refused {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo

    def undo() -> None:
        socket.socket.connect = real_connect  # type: ignore[method-assign]
        socket.socket.connect_ex = real_connect_ex  # type: ignore[method-assign]
        socket.getaddrinfo = real_getaddrinfo

    return undo


def pytest_configure(config: pytest.Config) -> None:
    config._kaito_undo_guard = install_network_guard()  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    undo = getattr(config, "_kaito_undo_guard", None)
    if undo is not None:
        undo()


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests_root = Path(__file__).parent
    gpu_present: bool | None = None
    for item in items:
        relative = Path(str(item.fspath)).relative_to(tests_root)
        tier = relative.parts[0] if len(relative.parts) > 1 else None
        if tier in TIERS and tier != "bench":
            item.add_marker(getattr(pytest.mark, tier))
        if item.get_closest_marker("gpu") is not None:
            if gpu_present is None:
                gpu_present = _cuda_available()
            if not gpu_present:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
