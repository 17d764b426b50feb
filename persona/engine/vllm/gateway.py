"""VllmRunner: the generation contract (persona.engine.contract) on vLLM servers over HTTP.

persona stays the gateway: it renders each conversation with its own renderer and sends vLLM
token ids. A persona goes as N placeholder ids in front plus `kv_transfer_params` naming its keys
and values, which persona's KV connector inside vLLM (persona.kvconnector) writes into the
positions vLLM gave the placeholders; deep and soft personas alike (a soft one is turned into
its keys and values once, persona.engine.vllm.kv), and the gateway serves those tensors at
`GET /v1/personas/{sha256}/kv`. vLLM batches, pages the KV cache and scales out. The token ids
that come back are decoded here with persona's tokenizer and stream decoder, so the text is
exactly what persona's own engine makes of the same tokens; stop strings are cut as every runner
cuts them (`watch_stops`).

The requests run as tasks on an event loop of this scheduler's own thread (the HTTP loop only
submits). Each goes to the live server with the fewest requests in flight; a server that cannot
be reached is marked down (its request goes to another while nothing was streamed yet) and is
taken back once it passes the start-up check again. A client that leaves cancels its task, which
closes the upstream stream: vLLM aborts the request.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from typing import Any

import httpx2 as httpx  # httpx, as huggingface_hub and openai install it

from persona.engine.chat import ChatEngine
from persona.engine.contract import (
    DEFAULT_MAX_QUEUE,
    SHUTTING_DOWN,
    Request,
    Sink,
    Ticket,
    deliver,
    prompt_tokens,
    watch_stops,
)
from persona.engine.detok import StreamDecoder
from persona.engine.rate import TokenRate
from persona.engine.vllm.kv import PersonaKV
from persona.engine.vllm.upstream import Upstream, UpstreamUnreachable, check_upstream, choose
from persona.engine.vllm.wire import COMPLETIONS, ids_body, parse_event, refused
from persona.errors import ConfigError, PersonaError, QueueFull, first_line
from persona.prompt.layout import KVLayout

UPSTREAM_ROWS = 256  # requests a vLLM server runs at once by default (its --max-num-seqs)
CANCEL_POLL_S = 0.1  # how often the loop looks for clients that left
RECHECK_S = 5.0  # how often a server marked down is checked again
CLOSE_WAIT_S = 10.0
CONNECT_TIMEOUT_S = 5.0


class NoUpstream(QueueFull):
    """No vLLM server can take the request now (a 503 to the client)."""


class _Unreachable(Exception):
    """The server could not be reached before anything of the reply came: try another."""


class VllmRunner:
    name = "vllm"
    layout: KVLayout | None  # the model's: every persona reaches vLLM as keys and values

    def __init__(
        self,
        engine: ChatEngine,
        upstreams: list[Upstream],
        kv: PersonaKV,
        *,
        dtype: str = "float32",
        max_queue: int = DEFAULT_MAX_QUEUE,
        recheck: Callable[[str], Upstream] | None = None,
        log: Callable[[str], None] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        if not upstreams:
            raise ConfigError("the vLLM scheduler needs at least one server")
        if max_queue < 0:
            raise ConfigError(f"max_queue={max_queue!r} must be 0 or more")
        self.engine = engine
        self.upstreams = upstreams
        self.kv = kv
        self._on_close = on_close  # stops a vLLM this gateway started
        # every persona reaches vLLM as keys and values of the model's layout, deep ones included
        self.layout = engine.backend.layout
        self.dtype = dtype
        self.max_queue = max_queue
        self.rate = TokenRate()
        self.requests_total = 0
        lengths = [u.max_model_len for u in upstreams if u.alive and u.max_model_len]
        if lengths:  # the window is the smallest server's
            engine.max_context = min(engine.max_context, *lengths)
        self._recheck = recheck or (lambda url: check_upstream(url, engine, dtype))
        self._log = log or (lambda line: print(f"persona: {line}", file=sys.stderr, flush=True))
        self._lock = threading.Lock()
        self._in_flight = 0  # submitted, not finished
        self._closed = False
        self._active: dict[asyncio.Task[Any], Ticket] = {}  # touched on the loop only
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="persona-vllm", daemon=True
        )
        self._thread.start()
        self._client: httpx.AsyncClient | None = None
        self._chores: list[asyncio.Task[Any]] = []
        asyncio.run_coroutine_threadsafe(self._open(), self._loop).result()

    # ---- the contract ---------------------------------------------------------------------------

    def submit(
        self, request: Request, sink: Sink, cancelled: threading.Event | None = None
    ) -> Ticket:
        self.engine.prepare(request)  # a conversation too long is refused here, with a 400
        cancelled = cancelled if cancelled is not None else threading.Event()
        ticket = Ticket(request, watch_stops(request, sink, cancelled), cancelled)
        with self._lock:  # scheduled under the lock, so that close() cannot stop the loop first
            if self._closed:
                raise QueueFull(SHUTTING_DOWN, retry_after_s=1)
            alive = sum(upstream.alive for upstream in self.upstreams)
            if alive and self._in_flight >= alive * UPSTREAM_ROWS + self.max_queue:
                raise QueueFull(
                    f"{self._in_flight} requests are in flight on {alive} vLLM servers (queue "
                    f"limit {self.max_queue}); retry in a moment",
                    retry_after_s=1,
                )
            if not alive:
                deliver(ticket, "error", NoUpstream(self._none_alive()))
                return ticket
            self._in_flight += 1
            self.requests_total += 1
            asyncio.run_coroutine_threadsafe(self._run(ticket), self._loop)
        return ticket

    def metrics(self) -> dict[str, float]:
        with self._lock:
            in_flight = self._in_flight
        alive = sum(upstream.alive for upstream in self.upstreams)
        return {
            "queue_depth": float(max(0, in_flight - alive * UPSTREAM_ROWS)),
            "active_rows": float(in_flight),
            "tokens_total": float(self.rate.total),
            "requests_total": float(self.requests_total),
            "tokens_per_second": self.rate.per_second(),
            "upstreams_alive": float(alive),
        }

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._shut(), self._loop).result(CLOSE_WAIT_S)
        except Exception:  # noqa: BLE001 - closing goes on whatever a task left behind
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=CLOSE_WAIT_S)
        if self._on_close is not None:
            self._on_close()

    # ---- one request ----------------------------------------------------------------------------

    async def _run(self, ticket: Ticket) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._active[task] = ticket
        request = ticket.request
        reply = _Reply(ticket, StreamDecoder(self.engine.tokenizer), self)
        persona: tuple[str, int, int] | None = None
        try:
            ids = list(request.ids or [])
            if request.persona is not None:
                if self.layout is None:
                    raise ConfigError(
                        "this model names no plain KV cache layout; vLLM's persona KV connector "
                        "cannot put a persona in front of it"
                    )
                # made once per persona (a soft one takes a forward pass): off this loop
                name, rows = await asyncio.get_running_loop().run_in_executor(
                    None, self.kv.name_of, request.persona
                )
                persona = (name, rows, self.layout.width)
            body = ids_body("", ids, request.config, self.engine.stop_ids, persona)
            tried: set[str] = set()
            while True:
                candidates = [u for u in self.upstreams if u.url not in tried]
                upstream = choose(candidates)
                if upstream is None:
                    deliver(ticket, "error", NoUpstream(self._none_alive()))
                    return
                tried.add(upstream.url)
                try:
                    await self._stream(upstream, {**body, "model": upstream.served_name}, reply)
                except _Unreachable as exc:
                    self._mark_down(upstream, str(exc))
                    continue
                break
            reply.end()
            deliver(ticket, "finish", reply.reason, prompt_tokens(request), reply.produced)
        except asyncio.CancelledError:
            if self._closed:
                deliver(ticket, "error", QueueFull(SHUTTING_DOWN))
            else:
                reply.end()
                deliver(ticket, "finish", "cancelled", prompt_tokens(request), reply.produced)
        except PersonaError as exc:
            named = request.persona
            if persona and named and type(exc) is PersonaError and reply.produced == 0:
                exc = PersonaError(  # a 500 before the reply: most often the persona's load
                    f"{exc}; if persona {named.name!r} (keys and values "
                    f"{persona[0][:12]}) did not load, the vLLM server's log says why"
                )
            deliver(ticket, "error", exc)
        except Exception as exc:  # noqa: BLE001 - a bug fails its request, not the server
            deliver(ticket, "error", PersonaError(f"generation failed: {first_line(exc)}"))
        finally:
            del self._active[task]
            with self._lock:
                self._in_flight -= 1

    def persona_kv(self, sha256: str) -> bytes | None:
        """The safetensors bytes of the persona keys and values named `sha256`, for the
        connector of a vLLM server that fetches them (None: not one of ours)."""
        return self.kv.read(sha256)

    async def _stream(self, upstream: Upstream, body: dict[str, Any], reply: _Reply) -> None:
        """Stream one completion from `upstream` into `reply`; returns early once the reply
        should stop (a stop string, or the client left)."""
        assert self._client is not None
        upstream.in_flight += 1
        upstream.picked += 1
        try:
            async with self._client.stream(
                "POST", f"{upstream.url}{COMPLETIONS}", json=body
            ) as response:
                if response.status_code != 200:
                    raise refused(response.status_code, await response.aread(), upstream.url)
                async for line in response.aiter_lines():
                    event = parse_event(line)
                    if event is None:
                        continue
                    if "error" in event:
                        raise refused(500, line[len("data:") :], upstream.url)
                    if not reply.take(event):
                        return
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise _Unreachable(first_line(exc)) from None
        except httpx.HTTPError as exc:  # it went away mid-request
            if reply.produced == 0 and not reply.ticket.cancelled.is_set():
                raise _Unreachable(first_line(exc)) from None
            self._mark_down(upstream, first_line(exc))
            raise PersonaError(
                f"the vLLM server at {upstream.url} went away mid-reply: {first_line(exc)}"
            ) from None
        finally:
            upstream.in_flight -= 1

    # ---- servers that go and come back ----------------------------------------------------------

    def _mark_down(self, upstream: Upstream, why: str) -> None:
        if upstream.alive:
            upstream.alive = False
            upstream.last_error = why
            self._log(f"the vLLM server at {upstream.url} is down ({why}); checking it again")

    def _none_alive(self) -> str:
        urls = ", ".join(upstream.url for upstream in self.upstreams)
        return f"no vLLM server is reachable ({urls}); retry once one is back"

    async def _open(self) -> None:
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT_S),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )
        self._chores = [
            asyncio.create_task(self._cancel_departed()),
            asyncio.create_task(self._bring_back()),
        ]

    async def _cancel_departed(self) -> None:
        while True:
            await asyncio.sleep(CANCEL_POLL_S)
            for task, ticket in list(self._active.items()):
                if ticket.cancelled.is_set() and not task.done():
                    task.cancel()  # closes the upstream stream: vLLM aborts the request

    async def _bring_back(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(RECHECK_S)
            for upstream in [u for u in self.upstreams if not u.alive]:
                try:
                    fresh = await loop.run_in_executor(None, self._recheck, upstream.url)
                except PersonaError as exc:
                    if str(exc) != upstream.last_error and not isinstance(exc, UpstreamUnreachable):
                        self._log(f"{first_line(exc)}; it stays out")  # up again, but refused
                    upstream.last_error = str(exc)
                    continue
                upstream.served_name, upstream.root = fresh.served_name, fresh.root
                if fresh.max_model_len:
                    self.engine.max_context = min(self.engine.max_context, fresh.max_model_len)
                upstream.alive, upstream.last_error = True, ""
                self._log(f"the vLLM server at {upstream.url} is serving")

    async def _shut(self) -> None:
        for chore in self._chores:
            chore.cancel()
        tasks = list(self._active)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, *self._chores, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()


class _Reply:
    """The token ids vLLM streams for one request, decoded into its ticket's sink."""

    def __init__(self, ticket: Ticket, decoder: StreamDecoder, runner: VllmRunner) -> None:
        self.ticket = ticket
        self.decoder = decoder
        self.runner = runner
        self.produced = 0  # tokens of the reply, the end-of-turn token excluded
        self.reason = "stop"
        self._ended = False

    def take(self, event: dict[str, Any]) -> bool:
        """One streamed event; False once the reply should stop."""
        for choice in event.get("choices") or []:
            if choice.get("finish_reason"):
                self.reason = "length" if choice["finish_reason"] == "length" else "stop"
            token_ids = choice.get("token_ids")
            if token_ids is None:  # a vLLM that does not return ids: its own text
                self.produced += 1 if choice.get("text") else 0
                if choice.get("text"):
                    deliver(self.ticket, "piece", choice["text"])
                if self.ticket.cancelled.is_set():
                    return False
                continue
            for token in token_ids:
                if token in self.runner.engine.stop_ids:
                    continue  # vLLM returns the end-of-turn token; persona's engine does not
                self.produced += 1
                self.runner.rate.add(1)
                piece = self.decoder.push(int(token))
                if piece:
                    deliver(self.ticket, "piece", piece)
                if self.ticket.cancelled.is_set():
                    return False
        return not self.ticket.cancelled.is_set()

    def end(self) -> None:
        """Characters the decoder held back while they could still change."""
        if self._ended:
            return
        self._ended = True
        tail = self.decoder.finish()
        if tail:
            deliver(self.ticket, "piece", tail)
