"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with their status.

Routes raise `APIError`; FastAPI's own validation errors (422 by default) become 400s that name
the parameter, as OpenAI's do.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from persona.errors import first_line

# status -> OpenAI's error type
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(
        error_body(error.status, error.message, error.param, error.code),
        status_code=error.status,
        headers=error.headers,
    )


def parameter_name(location: Sequence[Any]) -> str | None:
    """`("body", "messages", 0, "content")` -> "messages[0].content"; None for the body itself."""
    parts = [part for part in location if part != "body"]
    name = ""
    for part in parts:
        if isinstance(part, int):
            name += f"[{part}]"
        elif not name:
            name = str(part)
        elif str(part).startswith(("function-", "tagged-union", "list[", "str", "dict[")):
            continue  # pydantic's name for a union member, not a field the client sent
        else:
            name += f".{part}"
    return name or None


def validation_error(exc: RequestValidationError) -> APIError:
    """The first problem of a request FastAPI could not validate, as a 400 naming the parameter."""
    errors = list(exc.errors())
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        return APIError(
            400,
            "the body is not valid JSON; send a JSON object (Content-Type: application/json)",
            code="invalid_json",
        )
    param = parameter_name(first.get("loc", ()))
    message = str(first.get("msg", "invalid value"))
    if param is None:
        message = f"the body must be a JSON object ({message})"
    else:
        message = f"{param}: {message}"
    return APIError(400, message, param=param, code="invalid_value")


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: f"no route {request.url.path}", 405: "method not allowed"}.get(
            exc.status_code, str(exc.detail)
        )
        return error_response(APIError(exc.status_code, message))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        # the details are for the operator's log, not for a client that may be anyone
        print(
            f"persona serve: internal error on {request.url.path}: "
            f"{type(exc).__name__}: {first_line(exc)}",
            file=sys.stderr,
            flush=True,
        )
        return error_response(
            APIError(500, "internal error; the server's log has the details", code="internal_error")
        )
