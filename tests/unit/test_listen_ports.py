"""Listening ports for the dev cluster come from below the kernel's ephemeral range."""

from __future__ import annotations

import socket
from pathlib import Path

from kaito.devcluster.controlplane import free_port, listen_port_range


def test_the_span_ends_just_below_the_ephemeral_range(tmp_path: Path) -> None:
    range_file = tmp_path / "ip_local_port_range"
    range_file.write_text("32768\t60999\n")
    ports = listen_port_range(range_file)
    assert ports.stop == 32768  # the first ephemeral port is just past the span
    assert 32767 in ports and 32768 not in ports
    assert ports.start >= 1024


def test_an_unreadable_range_file_falls_back_to_linux_defaults(tmp_path: Path) -> None:
    assert listen_port_range(tmp_path / "missing").stop == 32768
    (tmp_path / "garbage").write_text("not numbers")
    assert listen_port_range(tmp_path / "garbage").stop == 32768


def test_a_free_port_is_bindable_and_outside_the_ephemeral_range() -> None:
    port = free_port()
    assert port in listen_port_range()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_a_taken_candidate_is_skipped_and_a_full_pool_falls_back_to_any_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        busy = taken.getsockname()[1]
        taken.listen()
        assert free_port(candidates=range(busy, busy + 1)) != busy


def test_a_preferred_port_is_free_again_once_its_listener_closed_even_after_traffic() -> None:
    from tests.support.registry import port_is_free

    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", free_port()))
        listener.listen()
        port = listener.getsockname()[1]
        assert not port_is_free("127.0.0.1", port)
        with socket.create_connection(("127.0.0.1", port)) as client:
            served, _ = listener.accept()
            served.close()  # the server closes first: its side of the connection is in TIME_WAIT
            client.recv(1)
    # The test image registry then gets the same port next session (buildah's layer cache is
    # kept per registry address).
    assert port_is_free("127.0.0.1", port)
