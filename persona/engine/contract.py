"""The generation contract: a `Request` goes in, pieces of text and one finish come out.

Every runner of replies speaks it, whatever computes underneath: persona's continuous batching
(persona.engine.scheduler), the one-at-a-time runner (persona.engine.serial), the gateway to vLLM
servers (persona.engine.vllm) and a remote OpenAI-compatible server (persona.engine.remote). The
HTTP server, `persona reply` and the chat client speak only this.

- `Runner.submit(request, sink, cancelled)` queues a request and returns at once with a `Ticket`
  (or raises `QueueFull`; a request that cannot run raises its one-line `PersonaError`).
- The runner calls the sink from its own thread: `piece(text)` any number of times, then exactly
  one of `finish(reason, prompt_tokens, completion_tokens)` or `error(error)`.
- Setting `cancelled` (or `Ticket.cancel()`) ends the request at the runner's next step, with
  `finish("cancelled", ...)`.
- Stop strings (`Request.stop`) are cut by the runner (`watch_stops`), so a sink never sees one.
- The persona is a loaded prompt (`Request.persona`) for a runner that computes the reply here; a
  runner that asks a server (`RemoteRunner`) knows it by name only: `Request.model` is the model
  id the server lists it under (`/v1/models`), and `persona` stays None.

The facts every runner shares live here once: the queue and row defaults, how prompt tokens are
counted (`prompt_tokens`) and the refusal of a full queue.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from persona.engine.config import GenerationConfig
from persona.engine.stops import StopScanner
from persona.errors import PersonaError, QueueFull
from persona.prompt.layout import KVLayout

if TYPE_CHECKING:  # torch-free at run time: the command line reads the defaults below
    from persona.prompt.render import Message
    from persona.prompt.softprompt import SoftPrompt

DEFAULT_MAX_QUEUE = 16  # requests that may wait for a free row before submit refuses one
DEFAULT_MAX_ROWS = 32  # conversations a batching runner decodes at once
SHUTTING_DOWN = "the server is shutting down; retry on another"


@dataclass
class Request:
    """One reply to make, validated and resolved (the persona is a loaded prompt, or None; for a
    remote runner, `model` names it as the server knows it)."""

    messages: Sequence[Message]
    persona: SoftPrompt | None
    config: GenerationConfig
    system: str | None = None
    stop: list[str] = field(default_factory=list)  # stop strings, cut before the sink sees them
    text: str | None = None  # a raw text to continue (/v1/completions) instead of `messages`
    ids: list[int] | None = None  # the token ids after the prompt; the runner fills it on submit
    model: str | None = None  # the server's model id for the persona (or bare model): remote only
    # the same conversation without the persona, for a strength other than 1 (filled with `ids`)
    bare_ids: list[int] | None = None
    dropped: int = 0  # the oldest turns left out to fit the window (filled with `ids`)

    @property
    def num_virtual_tokens(self) -> int:
        return self.persona.num_virtual_tokens if self.persona is not None else 0


def prompt_tokens(request: Request) -> int:
    """What a reply's usage counts as its prompt: the persona's positions and the ids after them."""
    return request.num_virtual_tokens + len(request.ids or [])


class Sink(Protocol):
    """Where a request's reply goes, called from the runner's thread."""

    def piece(self, text: str) -> None: ...

    def finish(self, reason: str, prompt_tokens: int, completion_tokens: int) -> None:
        """The reply ended: stop | length | cancelled."""
        ...

    def error(self, error: PersonaError) -> None:
        """The reply failed (the server shut down, the computation or the upstream failed); no
        finish follows."""
        ...


@dataclass
class Ticket:
    """A submitted request; `cancel()` ends it at the runner's next step (a client that left)."""

    request: Request
    sink: Sink
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class Runner(Protocol):
    """What serves replies: the HTTP server, `persona reply` and the chat client speak only this."""

    name: str  # the backend's name, as --backend calls it (torch, llama, vllm, remote)
    layout: KVLayout | None  # the KV layout deep personas must fit; None: soft personas only

    def submit(
        self, request: Request, sink: Sink, cancelled: threading.Event | None = None
    ) -> Ticket:
        """Queue `request` (see the module docstring); raises QueueFull or a PersonaError."""
        ...

    def persona_kv(self, sha256: str) -> bytes | None:
        """A persona's keys and values, as safetensors bytes named by their sha256, for engines
        that fetch them from this runner (vLLM's KV connector); None where it hands out none."""
        ...

    def metrics(self) -> dict[str, float]:
        """At least queue_depth, active_rows, tokens_total, requests_total, tokens_per_second."""
        ...

    def close(self) -> None:
        """Stop; requests still queued or running fail with QueueFull (retry elsewhere)."""
        ...


def queue_full(waiting: int, max_queue: int) -> QueueFull:
    """The one refusal of a full queue, whatever runner refuses."""
    return QueueFull(
        f"{waiting} requests are waiting already (the queue holds {max_queue}); retry in a moment"
    )


class StopWatch:
    """A sink in front of another that cuts the request's stop strings: text up to the first one
    goes on, then the request is cancelled and its finish reason becomes `stop`."""

    def __init__(self, sink: Sink, stop: list[str], cancelled: threading.Event) -> None:
        self.sink = sink
        self.cancelled = cancelled
        self._scanner = StopScanner(stop)

    def piece(self, text: str) -> None:
        safe = self._scanner.push(text)
        if safe:
            self.sink.piece(safe)
        if self._scanner.stopped:
            self.cancelled.set()  # the runner ends the row at its next step

    def finish(self, reason: str, prompt_tokens: int, completion_tokens: int) -> None:
        tail = self._scanner.flush()
        if tail:
            self.sink.piece(tail)
        reason = "stop" if self._scanner.stopped else reason
        self.sink.finish(reason, prompt_tokens, completion_tokens)

    def error(self, error: PersonaError) -> None:
        self.sink.error(error)


def watch_stops(request: Request, sink: Sink, cancelled: threading.Event) -> Sink:
    """`sink`, with the request's stop strings cut in front of it (itself where it has none)."""
    if not any(request.stop):
        return sink
    return StopWatch(sink, request.stop, cancelled)


def deliver(ticket: Ticket, event: str, *args: object) -> None:
    """Call a ticket's sink; a sink that raises loses its own reply (its request is cancelled),
    never another's."""
    try:
        getattr(ticket.sink, event)(*args)
    except Exception:  # noqa: BLE001 - the sink's own fault, and nothing is left to tell
        ticket.cancelled.set()
