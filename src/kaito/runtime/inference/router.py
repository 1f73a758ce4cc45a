"""HTTP layer: FastAPI routes, auth, body limit, error bodies and request metrics."""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kaito.runtime.inference import protocol as p
from kaito.runtime.inference.serving import (
    ClientGoneError,
    EventStream,
    InferenceServing,
    ServingError,
)

log = logging.getLogger(__name__)

OPENAI_PREFIX = "/v1/"
CLIENT_CLOSED = 499  # nginx's code: nobody reads it, but the access log shows why it ended
_ERROR_TEXTS = (
    (400, "Invalid request (for example a prompt beyond the context length)"),
    (401, "Missing or wrong API key"),
    (404, "Unknown model or adapter"),
    (413, "The request body is larger than --max-body-bytes"),
    (429, "The waiting queue is full"),
    (500, "Generation failed"),
    (503, "The model is still loading"),
)
OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": p.ErrorResponse, "description": text} for code, text in _ERROR_TEXTS
}
LEGACY_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": p.LegacyError, "description": text}
    for code, text in _ERROR_TEXTS
    if code != 404
}


def error_response(path: str, error: ServingError) -> JSONResponse:
    """The one place an error becomes a body: OpenAI's shape on /v1/*, upstream's elsewhere."""
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    if path.startswith(OPENAI_PREFIX):
        body = error.openai_body().model_dump()
    else:
        body = p.LegacyError(detail=error.message).model_dump()
    return JSONResponse(body, status_code=error.status, headers=headers)


class BodyLimit:
    """ASGI middleware: reads a request body up to `limit` bytes and answers 413 past it.

    The body is read before any route runs, so a huge upload costs at most `limit` bytes of
    memory and never reaches JSON parsing or tokenizing.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(path, scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client left while sending; the route sees an empty body
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                await self._refuse(path, scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        pending: list[Message] = [{"type": "http.request", "body": b"".join(chunks)}]

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        error = ServingError(
            413,
            f"the request body is larger than {self.limit} bytes (--max-body-bytes)",
            "RequestTooLargeError",
        )
        await error_response(path, error)(scope, receive, send)


def build_app(
    serving: InferenceServing,
    load_in_background: bool = True,
    on_load_error: Callable[[], None] | None = None,
) -> FastAPI:
    """The ASGI app; with `load_in_background` the app owns the engine's lifecycle: the model
    loads in a thread after startup and the engine stops at shutdown."""
    config = serving.config
    metrics = serving.metrics

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if load_in_background and serving.engine is None and serving.load_error is None:
            threading.Thread(
                target=_load_quietly, args=(serving, on_load_error), daemon=True
            ).start()
        yield
        if load_in_background:
            serving.shutdown()

    app = FastAPI(
        title="KAITO inference API",
        version="1.0.0",
        description="OpenAI-compatible chat and completions, LoRA adapters, and legacy /chat.",
        lifespan=lifespan,
    )

    async def require_key(request: Request) -> None:
        if config.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            token.encode(), config.api_key.encode()
        ):
            raise ServingError(401, "missing or invalid API key", "AuthenticationError")

    @app.exception_handler(ServingError)
    async def serving_error(request: Request, exc: ServingError) -> JSONResponse:
        return error_response(request.url.path, exc)

    @app.exception_handler(ClientGoneError)
    async def client_gone(_request: Request, _exc: ClientGoneError) -> Response:
        return Response(status_code=CLIENT_CLOSED)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # vLLM answers 400 with an OpenAI error body; the legacy API keeps FastAPI's 422.
        errors = exc.errors()
        if not request.url.path.startswith(OPENAI_PREFIX):
            return JSONResponse({"detail": [_plain(err) for err in errors]}, status_code=422)
        return error_response(request.url.path, _validation_error(errors[0] if errors else {}))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        error = ServingError(500, f"internal error: {type(exc).__name__}", "InternalServerError")
        return error_response(request.url.path, error)

    @app.middleware("http")
    async def count_requests(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.monotonic()
        response = await call_next(request)
        route = request.scope.get("route")
        path = str(getattr(route, "path", "other"))
        metrics.requests.labels(path, str(response.status_code)).inc()
        # Streaming responses finish later; their latency is observed when the stream ends.
        if not isinstance(response, StreamingResponse) or path == "/metrics":
            metrics.latency.labels(path).observe(time.monotonic() - started)
        return response

    # Outermost: a body past the limit is refused before anything else reads it.
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)

    def respond(result: BaseModel | EventStream, path: str) -> Response:
        if isinstance(result, BaseModel):
            return JSONResponse(result.model_dump())
        started = time.monotonic()

        async def body() -> AsyncIterator[str]:
            try:
                async for piece in result.events:
                    yield piece
            finally:
                metrics.latency.labels(path).observe(time.monotonic() - started)

        return StreamingResponse(body(), media_type="text/event-stream")

    @app.get("/", summary="Liveness banner (legacy)")
    async def root() -> dict[str, str]:
        return {"message": "Server is running"}

    @app.get(
        "/health",
        response_model=p.HealthResponse,
        responses={
            500: {"model": p.LegacyError, "description": "Loading failed"},
            503: {"model": p.HealthResponse, "description": "Loading"},
        },
    )
    async def health() -> JSONResponse:
        status, body = serving.health()
        return JSONResponse(body, status_code=status)

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get(
        "/v1/models",
        response_model=p.ModelList,
        dependencies=[Depends(require_key)],
        responses=OPENAI_ERRORS,
    )
    async def models() -> p.ModelList:
        return serving.models()

    stream_or_json: dict[int | str, dict[str, Any]] = {
        **OPENAI_ERRORS,
        200: {"content": {"text/event-stream": {}}, "description": "Completion or SSE"},
    }

    @app.post(
        "/v1/chat/completions",
        response_model=p.ChatCompletionResponse,
        dependencies=[Depends(require_key)],
        responses=stream_or_json,
    )
    async def chat_completions(req: p.ChatCompletionRequest, request: Request) -> Response:
        result = await serving.chat(req, request.is_disconnected)
        return respond(result, "/v1/chat/completions")

    @app.post(
        "/v1/completions",
        response_model=p.CompletionResponse,
        dependencies=[Depends(require_key)],
        responses=stream_or_json,
    )
    async def completions(req: p.CompletionRequest, request: Request) -> Response:
        result = await serving.completion(req, request.is_disconnected)
        return respond(result, "/v1/completions")

    @app.post(
        "/v1/load_lora_adapter",
        response_class=PlainTextResponse,
        dependencies=[Depends(require_key)],
        responses=OPENAI_ERRORS,
    )
    async def load_lora_adapter(req: p.LoadLoRAAdapterRequest) -> PlainTextResponse:
        return PlainTextResponse(await serving.load_adapter(req))

    @app.post(
        "/v1/unload_lora_adapter",
        response_class=PlainTextResponse,
        dependencies=[Depends(require_key)],
        responses=OPENAI_ERRORS,
    )
    async def unload_lora_adapter(req: p.UnloadLoRAAdapterRequest) -> PlainTextResponse:
        return PlainTextResponse(await serving.unload_adapter(req))

    @app.post(
        "/chat",
        response_model=p.LegacyResult,
        dependencies=[Depends(require_key)],
        responses=LEGACY_ERRORS,
        summary="Legacy KAITO chat (prompt or messages, generate_kwargs)",
    )
    async def legacy_chat(req: p.UnifiedRequestModel, request: Request) -> Response:
        return respond(await serving.legacy_chat(req, request.is_disconnected), "/chat")

    return app


def _validation_error(error: MutableMapping[str, Any]) -> ServingError:
    """A 400 naming the field, or for a body that is not JSON, the position where it broke."""
    loc = tuple(error.get("loc", ()))
    if error.get("type") == "json_invalid":
        position = loc[1] if len(loc) > 1 else "?"
        reason = (error.get("ctx") or {}).get("error", "invalid JSON")
        return ServingError(400, f"the body is not valid JSON: {reason} at character {position}")
    where = ".".join(str(x) for x in loc[1:]) or None
    message = f"{where}: {error.get('msg', 'invalid request')}" if where else "invalid request"
    return ServingError(400, message, param=where)


def _plain(error: MutableMapping[str, Any]) -> dict[str, Any]:
    # Validation errors may carry exception objects in ctx; keep the JSON-safe parts only.
    return {key: error[key] for key in ("type", "loc", "msg") if key in error}


def _load_quietly(serving: InferenceServing, on_error: Callable[[], None] | None) -> None:
    try:
        serving.load()
    except Exception:  # the error is kept on `serving` and shown by /health
        if on_error is not None:
            on_error()
