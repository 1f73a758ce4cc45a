"""HTTP layer: FastAPI routes, auth, error bodies and request metrics around `InferenceServing`."""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from kaito.runtime.inference import protocol as p
from kaito.runtime.inference.serving import InferenceServing, ServingError

log = logging.getLogger(__name__)

OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": p.ErrorResponse, "description": text}
    for code, text in (
        (400, "Invalid request (for example a prompt beyond the context length)"),
        (401, "Missing or wrong API key"),
        (404, "Unknown model or adapter"),
        (429, "The waiting queue is full"),
        (500, "Generation failed"),
        (503, "The model is still loading"),
    )
}
LEGACY_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": p.LegacyError, "description": text}
    for code, text in (
        (400, "prompt or messages missing, or too long"),
        (401, "Missing or wrong API key"),
        (429, "The waiting queue is full"),
        (500, "Generation failed"),
        (503, "The model is still loading"),
    )
}


def _openai_error(error: ServingError) -> JSONResponse:
    return JSONResponse(error.openai_body(), status_code=error.status)


def _legacy_error(error: ServingError) -> JSONResponse:
    return JSONResponse({"detail": error.message}, status_code=error.status)


def _disconnect_probe(request: Request) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return await request.is_disconnected()

    return probe


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
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            token.encode(), config.api_key.encode()
        ):
            raise _UnauthorizedError()

    class _UnauthorizedError(Exception):
        pass

    @app.exception_handler(_UnauthorizedError)
    async def unauthorized(_request: Request, _exc: _UnauthorizedError) -> JSONResponse:
        error = ServingError(401, "missing or invalid API key", "AuthenticationError")
        return JSONResponse(
            error.openai_body(), status_code=401, headers={"WWW-Authenticate": "Bearer"}
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # vLLM answers 400 with an OpenAI error body; the legacy API keeps FastAPI's 422.
        if not request.url.path.startswith("/v1/"):
            detail = [_plain(err) for err in exc.errors()]
            return JSONResponse({"detail": detail}, status_code=422)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ())[1:]) or None
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else "invalid request"
        return _openai_error(ServingError(400, message, param=where))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        error = ServingError(500, f"internal error: {type(exc).__name__}", "InternalServerError")
        if request.url.path.startswith("/v1/"):
            return _openai_error(error)
        return _legacy_error(error)

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

    def _stream(iterator: AsyncIterator[str], path: str) -> StreamingResponse:
        started = time.monotonic()

        async def body() -> AsyncIterator[str]:
            try:
                async for piece in iterator:
                    yield piece
            finally:
                metrics.latency.labels(path).observe(time.monotonic() - started)

        return StreamingResponse(body(), media_type="text/event-stream")

    @app.post(
        "/v1/chat/completions",
        response_model=p.ChatCompletionResponse,
        dependencies=[Depends(require_key)],
        responses={
            **OPENAI_ERRORS,
            200: {"content": {"text/event-stream": {}}, "description": "Completion or SSE"},
        },
    )
    async def chat_completions(req: p.ChatCompletionRequest, request: Request) -> Response:
        result = await serving.chat(req, _disconnect_probe(request))
        return _respond(result, "/v1/chat/completions", _stream)

    @app.post(
        "/v1/completions",
        response_model=p.CompletionResponse,
        dependencies=[Depends(require_key)],
        responses={
            **OPENAI_ERRORS,
            200: {"content": {"text/event-stream": {}}, "description": "Completion or SSE"},
        },
    )
    async def completions(req: p.CompletionRequest, request: Request) -> Response:
        result = await serving.completion(req, _disconnect_probe(request))
        return _respond(result, "/v1/completions", _stream)

    @app.post(
        "/v1/load_lora_adapter",
        response_class=PlainTextResponse,
        dependencies=[Depends(require_key)],
        responses=OPENAI_ERRORS,
    )
    async def load_lora_adapter(req: p.LoadLoRAAdapterRequest) -> Response:
        result = await serving.load_adapter(req)
        if isinstance(result, ServingError):
            return _openai_error(result)
        return PlainTextResponse(result)

    @app.post(
        "/v1/unload_lora_adapter",
        response_class=PlainTextResponse,
        dependencies=[Depends(require_key)],
        responses=OPENAI_ERRORS,
    )
    async def unload_lora_adapter(req: p.UnloadLoRAAdapterRequest) -> Response:
        result = await serving.unload_adapter(req)
        if isinstance(result, ServingError):
            return _openai_error(result)
        return PlainTextResponse(result)

    @app.post(
        "/chat",
        response_model=p.LegacyResult,
        dependencies=[Depends(require_key)],
        responses=LEGACY_ERRORS,
        summary="Legacy KAITO chat (prompt or messages, generate_kwargs)",
    )
    async def legacy_chat(req: p.UnifiedRequestModel, request: Request) -> Response:
        result = await serving.legacy_chat(req, _disconnect_probe(request))
        if result is None:
            return Response(status_code=499)
        if isinstance(result, ServingError):
            return _legacy_error(result)
        return JSONResponse(result.model_dump())

    return app


def _respond(
    result: Any,
    path: str,
    stream: Callable[[AsyncIterator[str], str], StreamingResponse],
) -> Response:
    if result is None:
        # The client disconnected; nobody reads this, but the access log shows why it ended.
        return Response(status_code=499)
    if isinstance(result, ServingError):
        return _openai_error(result)
    if hasattr(result, "model_dump"):
        return JSONResponse(result.model_dump())
    return stream(result, path)


def _plain(error: Any) -> dict[str, Any]:
    # Validation errors may carry exception objects in ctx; keep the JSON-safe parts only.
    return {key: error[key] for key in ("type", "loc", "msg") if key in error}


def _load_quietly(serving: InferenceServing, on_error: Callable[[], None] | None) -> None:
    try:
        serving.load()
    except Exception:  # the error is kept on `serving` and shown by /health
        if on_error is not None:
            on_error()
