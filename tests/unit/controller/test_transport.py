"""lightkube over the aiohttp transport, against a loopback HTTP server: reads, writes, errors,
gzip and a streamed watch come back as they do over httpx's own transport."""

from __future__ import annotations

import gzip
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
from aiohttp import web
from lightkube import ALL_NS, ApiError, AsyncClient, KubeConfig
from lightkube.resources.core_v1 import ConfigMap

from kaito.k8s.client import Kube
from kaito.k8s.transport import AiohttpTransport

JSON = dict[str, Any]


def config_map(name: str) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "ns", "resourceVersion": "3"},
        "data": {"k": "v"},
    }


def kube_for(server: str) -> Kube:
    config = KubeConfig.from_dict(
        {
            "clusters": [{"name": "c", "cluster": {"server": server}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }
    )
    return Kube(AsyncClient(config, transport=AiohttpTransport(False)))


@pytest.fixture
async def apiserver() -> AsyncIterator[tuple[str, list[web.Request]]]:
    seen: list[web.Request] = []

    async def get(request: web.Request) -> web.StreamResponse:
        seen.append(request)
        name = request.match_info["name"]
        if name == "missing":
            status = {"kind": "Status", "apiVersion": "v1", "code": 404, "message": "gone"}
            # Exactly the apiserver's type: lightkube turns only that into an ApiError.
            return web.Response(
                body=json.dumps(status), status=404, headers={"Content-Type": "application/json"}
            )
        body = json.dumps(config_map(name)).encode()
        if name == "zipped":
            return web.Response(
                body=gzip.compress(body),
                headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
            )
        return web.Response(body=body, headers={"Content-Type": "application/json"})

    async def patch(request: web.Request) -> web.Response:
        seen.append(request)
        sent = await request.json()
        answer = json.dumps({**config_map(request.match_info["name"]), **sent})
        return web.Response(body=answer, headers={"Content-Type": "application/json"})

    async def watch(request: web.Request) -> web.StreamResponse:
        seen.append(request)
        response = web.StreamResponse()
        await response.prepare(request)
        for index in range(3):
            event = {"type": "ADDED", "object": config_map(f"cm-{index}")}
            await response.write(json.dumps(event).encode() + b"\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/ns/configmaps/{name}", get)
    app.router.add_patch("/api/v1/namespaces/ns/configmaps/{name}", patch)
    app.router.add_get("/api/v1/configmaps", watch)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


async def test_reads_and_writes_go_through_with_the_clients_headers(
    apiserver: tuple[str, list[web.Request]],
) -> None:
    url, seen = apiserver
    kube = kube_for(url)
    try:
        assert await kube.get(ConfigMap, "one", "ns") == config_map("one")
        assert await kube.get(ConfigMap, "missing", "ns") is None
        assert (await kube.get(ConfigMap, "zipped", "ns") or {})["data"] == {"k": "v"}
        patched = await kube.client.patch(ConfigMap, "one", {"data": {"k": "w"}}, namespace="ns")
        assert patched.data == {"k": "w"}
    finally:
        await kube.close()
    assert seen[0].headers["Authorization"] == "Bearer t"
    assert seen[-1].method == "PATCH"


async def test_an_api_error_keeps_the_apiservers_status(
    apiserver: tuple[str, list[web.Request]],
) -> None:
    url, _ = apiserver
    kube = kube_for(url)
    try:
        with pytest.raises(ApiError) as caught:
            await kube.client.get(ConfigMap, "missing", namespace="ns")
        assert caught.value.status.code == 404
    finally:
        await kube.close()


async def test_a_watch_streams_line_by_line(apiserver: tuple[str, list[web.Request]]) -> None:
    url, _ = apiserver
    kube = kube_for(url)
    names = []
    try:
        async for op, obj in kube.client.watch(ConfigMap, namespace=ALL_NS):
            names.append((op, obj.metadata.name if obj.metadata else None))
            if len(names) == 3:
                break
    finally:
        await kube.close()
    assert names == [("ADDED", "cm-0"), ("ADDED", "cm-1"), ("ADDED", "cm-2")]


async def test_an_unreachable_apiserver_is_an_httpx_transport_error() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    kube = kube_for(f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(httpx2.TransportError):
            await kube.get(ConfigMap, "one", "ns")
    finally:
        await kube.close()
