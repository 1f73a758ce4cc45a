"""A TCP proxy on 127.0.0.1 that counts, records, throttles or cuts a registry link."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

REQUEST_LINE = re.compile(rb"(GET|HEAD|POST|PUT|PATCH|DELETE) (/v2/\S*) HTTP/1\.[01]\r\n")


@dataclass
class ProxyStats:
    """What went through: bytes from the registry, and each request's method and path."""

    downstream_bytes: int = 0
    requests: list[tuple[str, str]] = field(default_factory=list)
    cut: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def methods(self) -> set[str]:
        return {method for method, _ in self.requests}


@dataclass
class Proxy:
    host: str
    stats: ProxyStats

    def ref(self, repository: str, tag: str) -> str:
        return f"{self.host}/{repository}:{tag}"


@contextmanager
def start_proxy(
    upstream: str,
    *,
    cut_after: int | None = None,
    per_connection_bytes_s: float | None = None,
) -> Iterator[Proxy]:
    """Forward 127.0.0.1:<port> to `upstream` (host:port).

    `cut_after`: after that many bytes from upstream, every connection is dropped and new
    ones are refused (a node losing its link half way). `per_connection_bytes_s`: each
    connection is paced to that rate (a remote registry or CDN that caps every stream).
    """
    upstream_host, upstream_port = upstream.rsplit(":", 1)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    stats = ProxyStats()
    open_sockets: list[socket.socket] = []
    stopping = threading.Event()

    def cut() -> None:
        stats.cut = True
        for sock in list(open_sockets):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def pump(source: socket.socket, sink: socket.socket, downstream: bool) -> None:
        started, sent = time.monotonic(), 0
        try:
            while not stats.cut:
                data = source.recv(1 << 16)
                if not data:
                    break
                if downstream:
                    with stats.lock:
                        stats.downstream_bytes += len(data)
                        over = cut_after is not None and stats.downstream_bytes > cut_after
                    if over:
                        cut()
                        break
                    if per_connection_bytes_s:
                        sent += len(data)
                        ahead = sent / per_connection_bytes_s - (time.monotonic() - started)
                        if ahead > 0:
                            time.sleep(ahead)
                else:
                    with stats.lock:
                        stats.requests.extend(
                            (m.decode(), p.decode()) for m, p in REQUEST_LINE.findall(data)
                        )
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def accept() -> None:
        while not stopping.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if stats.cut:
                client.close()
                continue
            server = socket.create_connection((upstream_host, int(upstream_port)))
            open_sockets.extend((client, server))
            for args in ((client, server, False), (server, client, True)):
                threading.Thread(target=pump, args=args, daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield Proxy(f"127.0.0.1:{listener.getsockname()[1]}", stats)
    finally:
        stopping.set()
        listener.close()
        cut()
        for sock in open_sockets:
            sock.close()


def main() -> None:
    """`python -m tests.runtime.weights.proxy UPSTREAM [CAP_BYTES_S]`: print host, serve forever.

    A separate process keeps the proxy's Python threads off the measured process's GIL.
    """
    import sys

    cap = float(sys.argv[2]) if len(sys.argv) > 2 else None
    with start_proxy(sys.argv[1], per_connection_bytes_s=cap) as proxy:
        print(proxy.host, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
