"""The HTTP layer over `OpenAIAPI`: it parses, authenticates and streams (SSE), nothing more.

Security: the API key (when set) is compared in constant time on every route but `/health`; a body is
read up to `max_body_bytes` and no further (413); CORS headers only for the origins given. A client that
goes away cancels its request: the handler runs beside a watcher of the connection, and the engine frees
the request's slot at its next step.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from langchain_llamacpp.server._api import OpenAIAPI
from langchain_llamacpp.server._errors import (
    APIError,
    BadRequest,
    NotAllowed,
    NotFound,
    TooLarge,
    Unauthorized,
    from_exception,
)

DEFAULT_MAX_BODY_BYTES = 32 << 20  # inline images are base64 in the JSON body
_OPEN_PATHS = frozenset({"/health"})


@dataclass(frozen=True)
class HTTPSettings:
    """What the HTTP layer enforces (the API's own limits are `OpenAIAPI`'s)."""

    api_key: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    cors_origins: Sequence[str] = ()


def create_app(api: OpenAIAPI, settings: HTTPSettings | None = None) -> FastAPI:
    """The ASGI app serving `api` (mount it in another ASGI server, or run it with uvicorn)."""
    settings = settings or HTTPSettings()
    app = FastAPI(title="langchain-llamacpp", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.api = api
    _routes(app, api, settings.max_body_bytes)

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(NotFound(f"no route {request.method} {request.url.path}"))

    @app.exception_handler(405)
    async def not_allowed(request: Request, exc: Exception) -> Response:
        return _error(NotAllowed(f"method {request.method} not allowed on {request.url.path}"))

    if settings.api_key:
        app.add_middleware(_APIKey, key=settings.api_key)
    if settings.cors_origins:  # added last, so outermost: a 401 carries the CORS headers too
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
        )
    return app


def _routes(app: FastAPI, api: OpenAIAPI, max_body_bytes: int) -> None:
    def answered(endpoint: str, handler: Callable[[Request], Awaitable[Response]]) -> Callable[..., Any]:
        async def route(request: Request) -> Response:
            try:
                response = await handler(request)
            except APIError as e:
                response = _error(e)
            except Exception as e:  # a bug here, not bad input: a 500 in OpenAI's shape
                response = _error(from_exception(e))
            api.counters.add_request(endpoint, response.status_code)
            return response

        return route

    def generation(endpoint: str, call: Callable[[Any], Awaitable[Any]]) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            body = await _json_body(request, max_body_bytes)
            result = await _until_disconnect(request, call(body))
            if result is None:
                return Response(status_code=499)  # the client closed the connection (nginx's code); unread
            if isinstance(result, (dict, list)):  # a list: a rerank answer in TEI's shape
                return JSONResponse(result)
            return _EventStream(_sse(result), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

        return handler

    async def models(request: Request) -> Response:
        return JSONResponse(api.list_models())

    async def model(request: Request) -> Response:
        return JSONResponse(api.retrieve_model(request.path_params["model"]))

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(api.metrics(), media_type="text/plain; version=0.0.4")

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    chat = generation("chat", api.acreate_chat_completion)
    completions = generation("completions", api.acreate_completion)
    embeddings = generation("embeddings", api.acreate_embedding)
    rerank = generation("rerank", api.acreate_rerank)
    for path, endpoint, handler, methods in (
        ("/v1/chat/completions", "chat", chat, ["POST"]),
        ("/v1/completions", "completions", completions, ["POST"]),
        ("/v1/embeddings", "embeddings", embeddings, ["POST"]),
        *((path, "rerank", rerank, ["POST"]) for path in ("/v1/rerank", "/rerank", "/v1/reranking", "/reranking")),
        ("/v1/models", "models", models, ["GET"]),
        ("/v1/models/{model:path}", "models", model, ["GET"]),
        ("/metrics", "metrics", metrics, ["GET"]),
        ("/health", "health", health, ["GET"]),
    ):
        app.add_route(path, answered(endpoint, handler), methods=methods)


def _error(error: APIError) -> Response:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def _json_body(request: Request, limit: int) -> Any:
    """The JSON body, read no further than `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the request body is {declared} bytes, over the limit of {limit}")
    data = bytearray()
    async for part in request.stream():
        data += part
        if len(data) > limit:
            raise TooLarge(f"the request body is over the limit of {limit} bytes")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"the request body is not valid JSON: {e}") from None


async def _until_disconnect(request: Request, work: Awaitable[Any]) -> Any:
    """`work`, cancelled if the client disconnects first (its request then frees its slot)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait([task, watcher], return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return None
    return task.result()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _sse(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """Server-sent events: a `data:` line per chunk, then `[DONE]`; an error after the first chunk (the
    status is sent by then) as an `error` object, as OpenAI sends it."""
    try:
        async for chunk in chunks:
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"  # a tenth of json.dumps's time: one per token
    except APIError as e:
        yield b"data: " + json.dumps(e.body()).encode() + b"\n\n"
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]  # an async generator
    yield b"data: [DONE]\n\n"


class _EventStream(StreamingResponse):
    """A streaming response that always watches for the client going away (Starlette watches only under
    ASGI spec < 2.4, and otherwise notices when a write fails, at the next token): the stream is cancelled
    at once, which cancels the request, even while it waits in the queue."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = asyncio.ensure_future(self.stream_response(send))
        watcher = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait([stream, watcher], return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not stream.done():
                stream.cancel()
            await asyncio.gather(stream, watcher, return_exceptions=True)


class _APIKey:
    """Every route but /health needs `Authorization: Bearer KEY` (compared in constant time)."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.expected = f"Bearer {key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _OPEN_PATHS or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if hmac.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        response = _error(Unauthorized())
        await response(scope, receive, send)
