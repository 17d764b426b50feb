"""`persona reply` and `persona chat` through a running `persona serve`: the OpenAI API over the
owner-only socket.

A start costs seconds (torch's import alone takes two to three on a 2-core machine); a script that
calls `persona reply` many times pays it every time. When a server is running and serves the
model, precision, backend and library the reply asks for, the reply is streamed from it and the
client never imports torch. Otherwise (no server, another model, a busy or hung server) the
caller replies on its own. Only the standard library is used here, to keep the start instant.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from persona.engine.remote import RemoteRunner
from persona.errors import PersonaError
from persona.serve.identity import identity, socket_path

CONNECT_TIMEOUT_S = 2.0
# A request waits in the server's queue behind others (seconds to tens of seconds); past this, the
# client answers locally instead (a server busy with long replies, or one that accepts connections
# but no longer answers: stopped, hung).
ACCEPT_TIMEOUT_S = 20.0
# Once streaming, a reply sends a piece every few tokens; this long without a line, it has stalled.
STALL_TIMEOUT_S = 60.0
IDENTITY_HEADER = "X-Persona-Identity"  # checked by persona.serve.app
FALL_BACK = (409, 429, 503)
LOCAL_URL = "http://localhost/v1"  # the socket's API, as URLs and messages name it  # another model here, a full queue, a server shutting down


class UnixConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.socket_path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _NotTaken(Exception):
    """The server did not answer within ACCEPT_TIMEOUT_S."""


def local_runner(args: argparse.Namespace) -> RemoteRunner | None:
    """A runner over the local server when one is running and serves the model, precision,
    backend and library `args` ask for (`persona chat` without --local); None otherwise."""
    path = socket_path()
    if not path.exists():
        return None
    runner = RemoteRunner(
        LOCAL_URL,
        connection=lambda timeout: UnixConnection(path, timeout),
        headers={IDENTITY_HEADER: json.dumps(identity(args))},
        connect_timeout=CONNECT_TIMEOUT_S,
    )
    try:
        runner.models()  # a 409 when it serves something else; refused: a stale socket
    except PersonaError:
        return None
    return runner


def reply_via_server(args: argparse.Namespace, message: str, given: dict[str, Any]) -> int | None:
    """Answer through a running server: the exit code, or None when there is none that can answer.

    given: the sampling values the user named (GenerationConfig fields, None where not named);
    the server fills the others from the persona's own defaults, as for any request."""
    path = socket_path()
    if not path.exists():
        return None
    if args.persona is not None and args.persona.endswith(".safetensors"):
        if Path(args.persona).exists():
            return None  # a file, not a library persona: the server only serves its library
    headers = {
        IDENTITY_HEADER: json.dumps(identity(args)),  # ASCII: escaped non-ASCII path characters
        "Content-Type": "application/json",
    }
    started = time.perf_counter()
    try:
        models = _get(path, "/v1/models")
        model = _model_id(models, args.persona, args.no_persona)
        connection = UnixConnection(path, CONNECT_TIMEOUT_S)
        connection.connect()
        connection.request(
            "POST", "/v1/chat/completions", _body(args, message, given, model), headers
        )
        response = _response(connection)
    except _NotTaken:
        print(
            f"persona: the server did not take the request within {ACCEPT_TIMEOUT_S:g} s "
            "(busy or not answering); replying without it",
            file=sys.stderr,
            flush=True,
        )
        return None
    except (OSError, ValueError, KeyError, TypeError, http.client.HTTPException):
        return None  # a stale socket, a server that went away or is not ours: reply locally
    try:
        if response.status == 429:
            print(
                "persona: the server's queue is full; replying without it",
                file=sys.stderr,
                flush=True,
            )
        if response.status in FALL_BACK:
            return None
        if response.status != 200:
            return _fail(_error_message(response))
        return _stream(args, response, started)
    finally:
        connection.close()


def _get(path: Path, route: str) -> Any:
    connection = UnixConnection(path, CONNECT_TIMEOUT_S)
    try:
        connection.connect()
        connection.request("GET", route)
        response = _response(connection)
        if response.status != 200:
            raise ValueError(f"{route} answered {response.status}")
        return json.loads(response.read())
    finally:
        connection.close()


def _response(connection: UnixConnection) -> http.client.HTTPResponse:
    assert connection.sock is not None
    connection.sock.settimeout(ACCEPT_TIMEOUT_S)
    try:
        return connection.getresponse()
    except TimeoutError:
        raise _NotTaken from None


def _model_id(models: dict[str, Any], persona: str | None, no_persona: bool) -> str:
    """The model id that means what the flags mean: a persona by name, the bare model, or the
    library's default persona (the bare model when there is none)."""
    if persona is not None and not no_persona:
        return persona
    entries = models["data"]
    if not no_persona:
        default = next((entry for entry in entries if entry.get("default")), None)
        if default is not None:
            return default["id"]
    return next(entry["id"] for entry in entries if entry.get("persona") is None)


def _body(args: argparse.Namespace, message: str, given: dict[str, Any], model: str) -> str:
    messages = [{"role": "user", "content": message}]
    if args.system is not None:
        messages.insert(0, {"role": "system", "content": args.system})
    return json.dumps(
        {
            "model": model,
            "messages": messages,
            **{
                "max_tokens" if key == "max_new_tokens" else key: value
                for key, value in given.items()
                if value is not None
            },
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )


def _stream(args: argparse.Namespace, response: http.client.HTTPResponse, started: float) -> int:
    """Print the pieces as they come (or, with --json, the record at the end)."""
    pieces: list[str] = []
    extra: dict[str, Any] = {}
    tokens = 0
    try:
        while True:
            line = response.readline()
            if not line:
                break
            if not line.startswith(b"data: "):
                continue
            data = line[len(b"data: ") :].strip()
            if data == b"[DONE]":
                return _done(args, pieces, extra, tokens, started)
            event = json.loads(data)
            if "error" in event:
                return _fail(str(event["error"].get("message", event["error"])))
            if event.get("usage"):
                tokens = int(event["usage"]["completion_tokens"])
                extra = event.get("x_persona") or {}
            for choice in event.get("choices", []):
                piece = choice.get("delta", {}).get("content")
                if piece:
                    pieces.append(piece)
                    if not args.json:
                        sys.stdout.write(piece)
                        sys.stdout.flush()
    except TimeoutError:
        if not args.json:
            sys.stdout.write("\n")
        return _fail(
            f"the server stopped answering mid-reply (nothing for {STALL_TIMEOUT_S:g} s); "
            "run the command again with --local, and restart `persona serve`"
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError, http.client.HTTPException):
        pass  # the server was stopped mid-reply, or sent a broken line
    if not args.json and pieces:
        sys.stdout.write("\n")
    return _fail(
        "the server stopped before the reply was complete; run the command again "
        "(add --local to answer without it)"
    )


def _done(
    args: argparse.Namespace, pieces: list[str], extra: dict[str, Any], tokens: int, started: float
) -> int:
    reply = "".join(pieces)
    if not args.json:
        print()
        return 0
    record = {  # the keys and order of persona.cli.reply.reply_record
        "persona": extra.get("persona"),
        "model": extra.get("model"),
        "model_id": extra.get("model_id"),
        "precision": extra.get("precision"),
        "prompt": extra.get("prompt"),
        "reply": reply,
        "tokens": tokens,
        "seconds": round(time.perf_counter() - started, 3),
        "finish_reason": extra.get("finish_reason"),
    }
    print(json.dumps(record, ensure_ascii=False))
    return 0


def _error_message(response: http.client.HTTPResponse) -> str:
    try:
        return str(json.loads(response.read())["error"]["message"])
    except (OSError, ValueError, KeyError, TypeError, http.client.HTTPException):
        return f"the server answered HTTP {response.status}"


def _fail(message: str) -> NoReturn:
    raise PersonaError(message)  # the CLI prints it as one line and exits 1
