"""The suite's network guard lets loopback through and refuses everything else."""

from __future__ import annotations

import socket
import threading

import pytest

from tests.conftest import NetworkGuardError, is_cluster_host, is_loopback_host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "localhost", "[::1]"])
def test_loopback_hosts_are_allowed(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", ["203.0.113.7", "10.0.0.1", "example.com", "2001:db8::1"])
def test_other_hosts_are_not_loopback(host: str) -> None:
    assert not is_loopback_host(host)


@pytest.mark.parametrize("host", ["10.245.0.1", "10.245.0.254", "10.0.0.1", "10.0.0.255"])
def test_the_test_clusters_bridge_pod_and_service_addresses_are_allowed(host: str) -> None:
    assert is_cluster_host(host)


# Just past each range, the kwok pod range, cloud metadata, and names (never resolved).
@pytest.mark.parametrize(
    "host",
    ["10.245.1.1", "10.244.0.5", "10.0.1.0", "9.255.255.255", "169.254.169.254", "kubernetes"],
)
def test_addresses_next_to_the_cluster_networks_are_refused(host: str) -> None:
    assert not is_cluster_host(host)
    with socket.socket() as sock, pytest.raises(NetworkGuardError):
        sock.connect((host, 80))


def test_connect_to_a_documentation_address_is_refused_before_any_packet() -> None:
    with socket.socket() as sock, pytest.raises(NetworkGuardError, match=r"203\.0\.113\.7"):
        sock.connect(("203.0.113.7", 80))


def test_resolving_a_public_name_is_refused() -> None:
    with pytest.raises(NetworkGuardError, match=r"example\.com"):
        socket.getaddrinfo("example.com", 443)


def test_loopback_connection_still_works() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        accepted: list[bytes] = []

        def serve() -> None:
            conn, _ = server.accept()
            with conn:
                accepted.append(conn.recv(5))

        thread = threading.Thread(target=serve)
        thread.start()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            client.sendall(b"hello")
        thread.join(timeout=5)
    assert accepted == [b"hello"]
