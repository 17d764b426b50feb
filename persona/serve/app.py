"""The HTTP API: OpenAI's routes on FastAPI, speaking to a runner (persona.engine.contract).

A request is validated (schemas.py), its persona resolved (catalog.py), then submitted to the
runner as a `Request`, with a `ReplyStream` (stream.py) as its sink.
The response starts only once the first piece of the reply (or its end, or its error) is there,
so that a request the engine refuses still gets its own status instead of a broken stream.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from persona.engine.contract import Request, Runner
from persona.errors import ConfigError, PersonaError, QueueFull, first_line
from persona.serve.archive import ConversationArchive
from persona.serve.catalog import Catalog
from persona.serve.errors import APIError, error_body, install_handlers
from persona.serve.guard import CLIENT_CLOSED, Activity, ApiKey, BodyLimit, Observe
from persona.serve.metrics import RequestCounter, prometheus_text
from persona.serve.responses import DONE_EVENT, Reply, sse, usage
from persona.serve.schemas import (
    ChatRequest,
    CompletionRequest,
    Limits,
    chat_messages,
    completion_prompt,
    generation_config,
    refuse_unsupported,
    stop_strings,
)
from persona.serve.stream import ReplyStream

IDENTITY_HEADER = "x-persona-identity"  # `persona reply`: the model, precision, backend it needs
DISCONNECT_POLL_S = 0.5  # how often a request waiting for its first piece checks its client


@dataclass
class ServeState:
    runner: Runner
    catalog: Catalog
    limits: Limits = field(default_factory=Limits)
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    identity: dict[str, Any] = field(default_factory=dict)  # see persona.serve.identity
    record: dict[str, Any] = field(default_factory=dict)  # model, model_id, precision
    prompt_text: Callable[..., str] | None = None  # engine.prompt_text, for the local client
    archive: ConversationArchive | None = None
    requests: RequestCounter = field(default_factory=RequestCounter)
    activity: Activity = field(default_factory=Activity)


def create_app(state: ServeState) -> Any:
    """The ASGI app: FastAPI's routes inside the guard middleware."""
    app = FastAPI(title="persona", docs_url=None, redoc_url=None, openapi_url=None, lifespan=None)
    app.state.serve = state
    install_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        text = prometheus_text(state.runner.metrics(), state.requests)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(http: HTTPRequest) -> dict[str, Any]:
        _check_identity(http, state)  # a local client learns at once whether this server fits
        return {"object": "list", "data": await run_in_threadpool(state.catalog.models)}

    @app.get("/v1/models/{model:path}")
    async def model(model: str) -> dict[str, Any]:
        for entry in await run_in_threadpool(state.catalog.models):
            if entry["id"] == model:
                return entry
        prompt = await run_in_threadpool(state.catalog.resolve, model)  # 404: near misses named
        return state.catalog.entry(model, prompt)

    @app.get("/v1/personas/{sha256}/kv")
    async def persona_kv(sha256: str) -> Response:
        """A persona's keys and values, for persona's KV connector inside a vLLM server (the
        API key guards it as every route): safetensors bytes, named by their values' sha256."""
        data = await run_in_threadpool(state.runner.persona_kv, sha256)
        if data is None:
            raise APIError(404, f"no persona keys and values named {sha256[:64]!r} here")
        return Response(data, media_type="application/octet-stream")

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, http: HTTPRequest) -> Any:
        local = _check_identity(http, state)
        refuse_unsupported(body)
        messages, system = chat_messages(body, state.limits)
        persona, defaults = await run_in_threadpool(state.catalog.resolve_with_defaults, body.model)
        config = generation_config(body, state.limits, defaults)
        request = Request(messages, persona, config, system, stop_strings(body, defaults))
        reply = Reply(body.model, chat=True, system_fingerprint=state.record.get("model", ""))
        return await _respond(state, http, request, body, reply, local)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: HTTPRequest) -> Any:
        _check_identity(http, state)
        refuse_unsupported(body)
        prompt = completion_prompt(body)
        persona, defaults = await run_in_threadpool(state.catalog.resolve_with_defaults, body.model)
        config = generation_config(body, state.limits, defaults)
        request = Request([], persona, config, None, stop_strings(body, defaults), text=prompt)
        reply = Reply(body.model, chat=False, system_fingerprint=state.record.get("model", ""))
        return await _respond(state, http, request, body, reply, False)

    return Observe(
        ApiKey(BodyLimit(app, state.max_body_bytes), state.api_key), state.requests, state.activity
    )


def _check_identity(http: HTTPRequest, state: ServeState) -> bool:
    """True for a local client, `persona reply` or `persona chat` (it names what it needs); a 409
    when this server serves another model, precision or backend, so that it answers locally
    instead."""
    header = http.headers.get(IDENTITY_HEADER)
    if header is None:
        return False
    try:
        wanted = json.loads(header)
    except ValueError:
        wanted = None
    if wanted != state.identity:
        raise APIError(
            409,
            "this server runs another model, precision, backend or library",
            code="identity_mismatch",
        )
    return True


async def _respond(
    state: ServeState, http: HTTPRequest, request: Request, body: Any, reply: Reply, local: bool
) -> Any:
    stream = ReplyStream()
    try:
        await run_in_threadpool(state.runner.submit, request, stream, stream.cancelled)
    except QueueFull as exc:
        raise APIError(
            429, str(exc), code="queue_full", headers={"Retry-After": str(exc.retry_after_s)}
        ) from None
    except ConfigError as exc:
        raise APIError(400, str(exc), code="invalid_value") from None
    pieces = stream.pieces().__aiter__()
    first = await _next_piece(pieces, stream, http)  # errors come here with their status
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _events(state, http, request, stream, pieces, first, reply, include_usage, local)
        return StreamingResponse(
            events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
    text = [] if first is None else [first]
    while first is not None:
        first = await _next_piece(pieces, stream, http)
        if first is not None:
            text.append(first)
    whole = "".join(text)
    await _archive(state, request, whole, stream)
    counts = usage(stream.prompt_tokens, stream.completion_tokens)
    return JSONResponse(reply.whole(whole, _finish_reason(stream), counts))


async def _next_piece(
    pieces: AsyncIterator[str], stream: ReplyStream, http: HTTPRequest
) -> str | None:
    """The next piece (None at the end), cancelling the stream if the client leaves while
    it waits; the stream's error as an APIError with its status."""
    waiting = asyncio.ensure_future(pieces.__anext__())
    try:
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=DISCONNECT_POLL_S)
            if done:
                return waiting.result()
            if await http.is_disconnected():
                stream.cancel()
                raise APIError(
                    CLIENT_CLOSED, "the client closed the connection", code="client_closed"
                )
    except StopAsyncIteration:
        return None
    except APIError:
        raise
    except ConfigError as exc:
        raise APIError(400, str(exc), param="messages", code="invalid_value") from None
    except QueueFull as exc:
        raise APIError(503, str(exc), code="shutting_down") from None
    except PersonaError as exc:
        raise APIError(500, str(exc), code="generation_failed") from None
    finally:
        if not waiting.done():
            waiting.cancel()


async def _events(
    state: ServeState,
    http: HTTPRequest,
    request: Request,
    stream: ReplyStream,
    pieces: AsyncIterator[str],
    first: str | None,
    reply: Reply,
    include_usage: bool,
    local: bool,
) -> AsyncIterator[str]:
    text: list[str] = []
    try:
        yield reply.chunk(first=True, with_usage=include_usage)
        piece = first
        while piece is not None:
            text.append(piece)
            yield reply.chunk(piece, with_usage=include_usage)
            piece = await anext(pieces, None)
    except Exception as exc:  # the response has started: the error goes in the stream
        yield sse(error_body(500, f"stream failed: {first_line(exc)}", code="generation_failed"))
        return
    finally:
        if not stream.done:
            stream.cancel()  # the client left mid-reply: free the row
    yield reply.chunk(finish_reason=_finish_reason(stream), with_usage=include_usage)
    if include_usage:
        extra = {"x_persona": _record(state, request, stream)} if local else None
        yield reply.usage_chunk(usage(stream.prompt_tokens, stream.completion_tokens), extra)
    yield DONE_EVENT
    await _archive(state, request, "".join(text), stream)


def _finish_reason(stream: ReplyStream) -> str:
    return "length" if stream.finish_reason == "length" else "stop"


def _record(state: ServeState, request: Request, stream: ReplyStream) -> dict[str, Any]:
    """What `persona reply --json` prints besides the reply, for the local client."""
    prompt = (
        state.prompt_text(request.messages, request.persona, system=request.system)
        if state.prompt_text is not None
        else None
    )
    return {
        **state.record,
        "persona": request.persona.name if request.persona is not None else None,
        "prompt": prompt,
        "finish_reason": stream.finish_reason,
    }


async def _archive(state: ServeState, request: Request, text: str, stream: ReplyStream) -> None:
    if state.archive is None or request.text is not None:
        return
    persona = request.persona
    await run_in_threadpool(
        state.archive.save,
        list(request.messages),
        request.system,
        text,
        persona.name if persona is not None else None,
        token_count=stream.completion_tokens,
        cut_short=stream.finish_reason != "stop",
    )
