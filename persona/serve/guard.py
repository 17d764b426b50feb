"""What every request passes before a route sees it: the API key, the body-size limit, and the
counts `/metrics` and `--idle-exit` read. Plain ASGI middleware, so a body too large is refused
before any of it is parsed.
"""

from __future__ import annotations

import hmac
import json
import time
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from persona.serve.errors import error_body
from persona.serve.metrics import RequestCounter

OPEN_PATHS = ("/health",)  # answered without the API key (load balancers, `persona reply` probes)


def is_local_socket(scope: Scope) -> bool:
    """The request came through the owner-only Unix socket (uvicorn gives its server as (path, None))."""
    server = scope.get("server")
    return server is not None and server[1] is None


async def send_error(
    send: Send, status: int, message: str, code: str, headers: dict[str, str] | None = None
) -> None:
    body = json.dumps(error_body(status, message, code=code)).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    raw_headers += [
        (key.lower().encode(), value.encode()) for key, value in (headers or {}).items()
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


class ApiKey:
    """Requests over TCP need `Authorization: Bearer KEY` when the server has a key; the Unix
    socket is owner-only, so the file's permissions are its key."""

    def __init__(self, app: ASGIApp, key: str | None) -> None:
        self.app = app
        self.key = key.encode() if key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or self.key is None
            or scope["path"] in OPEN_PATHS
            or is_local_socket(scope)
        ):
            await self.app(scope, receive, send)
            return
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.key):
            await self.app(scope, receive, send)
            return
        message = (
            "no API key; send it as `Authorization: Bearer KEY`"
            if not token
            else "the API key is not the one this server was started with"
        )
        await send_error(send, 401, message, "invalid_api_key", {"WWW-Authenticate": "Bearer"})


class BodyLimit:
    """Read the whole body first, refusing with 413 as soon as it passes `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # from here on, only http.disconnect
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        await send_error(
            send,
            413,
            f"the body is larger than this server's limit of {self.max_bytes} bytes "
            "(persona serve --max-body-bytes)",
            "body_too_large",
        )


class Activity:
    """Requests in flight and when the last one ended: what `--idle-exit` waits on."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.last = time.monotonic()

    def idle_for(self) -> float:
        return 0.0 if self.in_flight else time.monotonic() - self.last


CLIENT_CLOSED = 499  # what a request counts as when its client left before any answer


class Observe:
    """Count every answer by status (for /metrics) and track activity (for --idle-exit)."""

    def __init__(self, app: ASGIApp, requests: RequestCounter, activity: Activity) -> None:
        self.app = app
        self.requests = requests
        self.activity = activity

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: dict[str, Any] = {"code": None}

        async def observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        self.activity.in_flight += 1
        try:
            await self.app(scope, receive, observed)
        except Exception:
            status["code"] = status["code"] or 500  # a fault of the server's, answered or not
            raise
        finally:
            self.activity.in_flight -= 1
            self.activity.last = time.monotonic()
            # nothing was answered and nothing failed: the client left first (nginx's 499)
            self.requests.count(status["code"] or CLIENT_CLOSED)
