"""An httpx transport over aiohttp, so that lightkube's requests skip httpx's own HTTP stack."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx2

# Measured on the operator bench (bench/operator): httpx's connection pool, anyio's TLS
# stream and h11 took about two thirds of the operator's CPU time for 200 Workspaces;
# aiohttp (kopf's own client, C-accelerated parser, asyncio's TLS) does the same requests
# for much less. lightkube keeps building the requests (URL, auth, body) and decoding them.


class _Body(httpx2.AsyncByteStream):
    """An aiohttp response body as httpx reads it (streamed: watches use it too)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, OSError) as error:
            raise httpx2.ReadError(str(error)) from error
        except TimeoutError as error:
            raise httpx2.ReadTimeout(str(error)) from error

    async def aclose(self) -> None:
        self.response.release()


class AiohttpTransport(httpx2.AsyncBaseTransport):
    """Sends httpx requests with one aiohttp session (created on first use, in the loop
    that uses it); aiohttp errors become httpx's transport errors, which callers handle."""

    def __init__(self, ssl_context: ssl.SSLContext | bool, *, limit: int = 0) -> None:
        self.ssl_context = ssl_context
        self.limit = limit
        self.session: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None or self.session.closed:
            connector = aiohttp.TCPConnector(ssl=self.ssl_context, limit=self.limit)
            # httpx decodes gzip itself (it asked for it): hand over the bytes as sent.
            self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self.session

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        timeouts: dict[str, Any] = request.extensions.get("timeout") or {}
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=timeouts.get("connect"),
            sock_connect=timeouts.get("connect"),
            sock_read=timeouts.get("read"),
        )
        body = await request.aread()
        try:
            response = await self._session().request(
                request.method,
                str(request.url),
                headers=request.headers.multi_items(),
                data=body or None,
                timeout=timeout,
                allow_redirects=False,
            )
        except aiohttp.ClientConnectorError as error:
            raise httpx2.ConnectError(str(error), request=request) from error
        except TimeoutError as error:
            raise httpx2.ReadTimeout(str(error), request=request) from error
        except (aiohttp.ClientError, OSError) as error:
            raise httpx2.NetworkError(str(error), request=request) from error
        headers = [
            (key.decode("latin-1"), value.decode("latin-1")) for key, value in response.raw_headers
        ]
        return httpx2.Response(
            status_code=response.status,
            headers=headers,
            stream=_Body(response),
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        if self.session is not None:
            await self.session.close()
