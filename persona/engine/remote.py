"""RemoteRunner: the generation contract (persona.engine.contract) over a running OpenAI-compatible
server, such as `persona serve` here or on another machine.

Each request is one `POST /v1/chat/completions` with `stream: true`; the server-sent events become
the sink's pieces and its finish. The persona is named by its model id (`Request.model`, what the
server lists at `/v1/models`); the server applies it. Setting `cancelled` closes the stream, which
the server takes as a client that left. A server that cannot be reached, refuses the API key or
lacks the persona fails the request in one line (`RemoteError`, `NotFoundError`).

Only the standard library is used, so that a remote chat never imports torch.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict
from typing import Any

from persona.engine.config import GenerationConfig
from persona.engine.contract import (
    DEFAULT_MAX_QUEUE,
    SHUTTING_DOWN,
    Request,
    Sink,
    Ticket,
    deliver,
    queue_full,
    watch_stops,
)
from persona.engine.rate import TokenRate
from persona.errors import (
    ConfigError,
    NotFoundError,
    PersonaError,
    QueueFull,
    RemoteError,
    first_line,
)
from persona.prompt.layout import KVLayout

CONNECT_TIMEOUT_S = 5.0
# The server answers once the reply's first piece is there (it may wait in the server's queue);
# once streaming, a piece comes every token or two. This long without a line, it has stalled.
STALL_TIMEOUT_S = 300.0
CANCEL_POLL_S = 0.05  # how often a streaming request checks whether it was cancelled
API_KEY_ENV = "PERSONA_API_KEY"


class RemoteRunner:
    """Replies from the server at `base_url` (`http://HOST:PORT/v1`); `api_key` is sent as a
    bearer token."""

    name: str = "remote"
    layout: KVLayout | None = None  # the server runs the personas: nothing must fit a KV layout

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        stall_timeout: float = STALL_TIMEOUT_S,
        connection: Callable[[float], http.client.HTTPConnection] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """`connection` (given the connect timeout) makes the HTTP connection another way than
        to `base_url`'s host and port (a Unix socket); `headers` go with every request."""
        self.base_url, self._scheme, self._host, self._port, self._prefix = _parse(base_url)
        self.api_key = api_key or None
        self._make_connection = connection
        self._headers = dict(headers or {})
        self.max_queue = max_queue
        self.connect_timeout = connect_timeout
        self.stall_timeout = stall_timeout
        self.rate = TokenRate()
        self.requests_total = 0
        self._lock = threading.Lock()
        self._active: dict[int, Ticket] = {}  # by id(): a Ticket is not hashable
        self._threads: set[threading.Thread] = set()
        self._closed = False

    # ---- what the server serves -----------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        """The server's `/v1/models` entries (a persona's has `persona` set to its name)."""
        connection = self._connection()
        try:
            response = self._send(connection, "GET", "/models", None)
            if response.status != 200:
                raise _refusal(self.base_url, response, "")
            try:
                data = json.loads(response.read())["data"]
                return [entry for entry in data if isinstance(entry, dict) and "id" in entry]
            except (ValueError, KeyError, TypeError, OSError, http.client.HTTPException):
                raise RemoteError(
                    f"{self.base_url}/models did not answer with a list of models; is --server "
                    "an OpenAI-compatible API (http://HOST:PORT/v1)?"
                ) from None
        finally:
            connection.close()

    # ---- the contract ---------------------------------------------------------------------------

    def submit(
        self, request: Request, sink: Sink, cancelled: threading.Event | None = None
    ) -> Ticket:
        if request.model is None:
            raise ConfigError("a remote request needs the model id the server knows it by")
        if request.text is not None or not request.messages:
            raise ConfigError("the conversation is empty; send at least one message")
        cancelled = cancelled if cancelled is not None else threading.Event()
        ticket = Ticket(request, watch_stops(request, sink, cancelled), cancelled)
        with self._lock:
            if self._closed:
                raise QueueFull(SHUTTING_DOWN, retry_after_s=1)
            if len(self._active) > self.max_queue:
                raise queue_full(len(self._active), self.max_queue)
            self._active[id(ticket)] = ticket
            self.requests_total += 1
            thread = threading.Thread(
                target=self._run, args=(ticket,), name="persona-remote", daemon=True
            )
            self._threads.add(thread)
        thread.start()
        return ticket

    def metrics(self) -> dict[str, float]:
        with self._lock:
            active = float(len(self._active))
        return {
            "queue_depth": 0.0,  # the server queues; here every request is on its way
            "active_rows": active,
            "tokens_total": float(self.rate.total),
            "requests_total": float(self.requests_total),
            "tokens_per_second": self.rate.per_second(),
        }

    def persona_kv(self, sha256: str) -> bytes | None:
        return None  # the model runs here (or on the server asked): nothing fetches keys from it

    def close(self) -> None:
        """Cancel what is streaming (each ends with finish("cancelled")) and wait for it."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
            for ticket in self._active.values():
                ticket.cancel()
        for thread in threads:
            thread.join(timeout=CONNECT_TIMEOUT_S)

    # ---- one request ----------------------------------------------------------------------------

    def _run(self, ticket: Ticket) -> None:
        counted = [0]
        try:
            self._stream(ticket, counted)
        except PersonaError as exc:
            deliver(ticket, "error", exc)
        except Exception as exc:  # noqa: BLE001 - a bug fails its request, not the caller
            deliver(ticket, "error", PersonaError(f"{type(exc).__name__}: {first_line(exc)}"))
        finally:
            with self._lock:
                self._active.pop(id(ticket), None)
                self._threads.discard(threading.current_thread())

    def _stream(self, ticket: Ticket, counted: list[int]) -> None:
        request = ticket.request
        connection = self._connection()
        streaming = threading.Event()  # set once the request thread no longer needs the socket
        watcher = threading.Thread(
            target=_close_when_cancelled,
            args=(ticket.cancelled, streaming, connection),
            name="persona-remote-cancel",
            daemon=True,
        )
        watcher.start()
        try:
            try:
                response = self._send(connection, "POST", "/chat/completions", _body(request))
            except RemoteError:
                if ticket.cancelled.is_set():  # the socket was closed under it: a cancel
                    deliver(ticket, "finish", "cancelled", 0, 0)
                    return
                raise
            if response.status != 200:
                raise _refusal(self.base_url, response, request.model or "")
            reason, done = "stop", False
            usage: dict[str, Any] = {}
            try:
                for event in _events(response):
                    if event is None:  # data: [DONE]
                        done = True
                        break
                    if "error" in event:
                        raise RemoteError(f"the server failed the reply: {_message(event)}")
                    usage = event.get("usage") or usage
                    for choice in event.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            counted[0] += 1
                            self.rate.add(1)
                            deliver(ticket, "piece", piece)
                        reason = str(choice.get("finish_reason") or reason)
                    if ticket.cancelled.is_set():
                        break
            except (OSError, ValueError, http.client.HTTPException):
                pass  # a closed socket (a cancel), a server stopped mid-reply, a broken line
            if not done and not ticket.cancelled.is_set():
                raise _broken(self.base_url)
            if ticket.cancelled.is_set():
                reason = "cancelled"
            deliver(
                ticket,
                "finish",
                reason,
                int(usage.get("prompt_tokens", 0)),
                int(usage.get("completion_tokens", counted[0])),
            )
        finally:
            streaming.set()
            connection.close()

    # ---- HTTP -----------------------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        if self._make_connection is not None:
            return self._make_connection(self.connect_timeout)
        kind = (
            http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        )
        return kind(self._host, self._port, timeout=self.connect_timeout)

    def _send(
        self, connection: http.client.HTTPConnection, method: str, route: str, body: str | None
    ) -> http.client.HTTPResponse:
        headers = {"Accept": "application/json", **self._headers}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            connection.connect()
            assert connection.sock is not None
            connection.sock.settimeout(self.stall_timeout)
            connection.request(method, self._prefix + route, body, headers)
            return connection.getresponse()
        except TimeoutError:
            raise RemoteError(
                f"the server at {self.base_url} did not answer within {self.stall_timeout:g} s"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise RemoteError(
                f"cannot reach the server at {self.base_url} ({_reason(exc)}); is `persona serve` "
                "running there?"
            ) from None


def _parse(base_url: str) -> tuple[str, str, str, int | None, str]:
    """(the URL as shown, scheme, host, port, path prefix) of `http://HOST:PORT/v1`; a URL without
    a path means its `/v1`."""
    url = base_url.strip()
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
        raise ConfigError(
            f"--server {base_url!r} is not a server's address; give one like http://HOST:PORT/v1"
        )
    prefix = parts.path.rstrip("/") or "/v1"
    return f"{parts.scheme}://{parts.netloc}{prefix}", parts.scheme, parts.hostname, port, prefix


def _body(request: Request) -> str:
    """The request as OpenAI's chat API takes it. Settings left at the built-in defaults are not
    sent: the server fills in its own (the persona's defaults there, within its limits)."""
    built_in = asdict(GenerationConfig())
    settings = {
        "max_tokens" if key == "max_new_tokens" else key: value
        for key, value in asdict(request.config).items()
        if value is not None and value != built_in[key]
    }
    messages = list(request.messages)
    if request.system is not None:
        messages.insert(0, {"role": "system", "content": request.system})
    body: dict[str, Any] = {
        "model": request.model,
        "messages": messages,
        **settings,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    return json.dumps(body)


def _events(response: http.client.HTTPResponse) -> Iterator[dict[str, Any] | None]:
    """The JSON events of a server-sent event stream; None for its end, `data: [DONE]`."""
    while True:
        line = response.readline()
        if not line:
            return
        if not line.startswith(b"data:"):
            continue
        data = line[len(b"data:") :].strip()
        if data == b"[DONE]":
            yield None
            return
        event = json.loads(data)
        if isinstance(event, dict):
            yield event


def _close_when_cancelled(
    cancelled: threading.Event, streaming: threading.Event, connection: http.client.HTTPConnection
) -> None:
    """Shut the request's socket once it is cancelled, so that a blocked read returns at once."""
    while not streaming.is_set():
        if cancelled.wait(CANCEL_POLL_S):
            sock = connection.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            return


def _refusal(base_url: str, response: http.client.HTTPResponse, model: str) -> PersonaError:
    """The one-line error for a response that is not a 200."""
    message = _message_of(response)
    status = response.status
    if status == 401:
        return RemoteError(
            f"the server at {base_url} refused the API key (HTTP 401); give the right one with "
            "--api-key or $PERSONA_API_KEY"
        )
    if status == 404 and model:
        return NotFoundError(
            f"the server at {base_url} has no persona {model!r}; /personas lists what it serves"
        )
    if status == 429 or status == 503:
        return QueueFull(f"the server is busy: {message}; retry in a moment")
    if status == 400:
        return ConfigError(f"the server refused the request: {message}")
    return RemoteError(f"the server at {base_url} answered HTTP {status}: {message}")


def _message_of(response: http.client.HTTPResponse) -> str:
    try:
        return _message(json.loads(response.read()))
    except (OSError, ValueError, TypeError, http.client.HTTPException):
        return response.reason or "no reason given"


def _message(body: Any) -> str:
    try:
        return first_line(Exception(body["error"]["message"]))
    except (KeyError, TypeError):
        return first_line(Exception(str(body)))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    return first_line(exc)


def _broken(base_url: str) -> RemoteError:
    return RemoteError(
        f"the server at {base_url} stopped before the reply was complete; /retry asks again"
    )
