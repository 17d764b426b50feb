"""The contract between the HTTP layer and whatever runs the model: jobs in, text pieces out.

The HTTP layer validates a request, resolves its persona and hands a `Job` to `Scheduler.submit`,
which answers at once with a `Generation` (or raises `QueueFull`). A scheduler's worker threads
feed the generation (`emit`, then `finish` or `fail`); the event loop reads it (`pieces`). Stop
strings are cut inside the generation (persona.engine.stops), so every scheduler handles them alike.

A scheduler class is built as `SchedulerClass(engine: ChatEngine, *, max_queue: int)`, where
`max_queue` is how many jobs may wait for a free row before `submit` refuses one.
Two stand behind this contract: `SerialScheduler` (persona.serve.scheduler_serial, one reply at a
time) and the continuous-batching one (persona.serve.scheduler_batch).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from persona.engine.config import GenerationConfig
from persona.engine.stops import StopScanner
from persona.errors import QueueFull as QueueFull  # what submit raises, for the HTTP layer
from persona.prompt.render import Message
from persona.prompt.softprompt import SoftPrompt


@dataclass
class Job:
    """One request, already validated and resolved."""

    messages: list[Message]
    persona: SoftPrompt | None
    system: str | None
    config: GenerationConfig
    stop: list[str] = field(default_factory=list)  # stop strings
    raw_prompt: str | None = None  # /v1/completions: this text instead of rendered messages


_END = object()  # the last item of a generation's stream


class Generation:
    """The handle `submit` returns: pieces of one reply, and its counts once it is done.

    Made on the event loop; `emit`, `finish` and `fail` may be called from any thread.
    """

    def __init__(self, stop: list[str], loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._items: asyncio.Queue[object] = asyncio.Queue()
        self._scanner = StopScanner(stop)
        # set by `cancel` (the client left) or by a stop string; the producer ends at its next step
        self.stopping = threading.Event()
        self.prompt_tokens = 0  # valid once done; see docs/serving.md for what is counted
        self.completion_tokens = 0
        self.finish_reason = ""  # stop | length | cancelled
        self.done = False

    # ---- the event loop's side ------------------------------------------------------------------

    async def pieces(self) -> AsyncIterator[str]:
        """Text deltas as they come; ends when the reply does, raises what the producer failed with."""
        while True:
            item = await self._items.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]

    def cancel(self) -> None:
        """The client is gone: the producer frees the row at its next step."""
        self.stopping.set()

    # ---- the producer's side (any thread) -------------------------------------------------------

    def emit(self, piece: str) -> bool:
        """Pass on a piece of generated text; False once generation should stop (a stop string
        was completed, or the client left)."""
        text = self._scanner.push(piece)
        if text:
            self._send(text)
        if self._scanner.stopped:
            self.stopping.set()
        return not self.stopping.is_set()

    def finish(self, prompt_tokens: int, completion_tokens: int, finish_reason: str) -> None:
        """The reply is over: release any held text and record its counts."""
        tail = self._scanner.flush()
        if tail:
            self._send(tail)
        self.prompt_tokens, self.completion_tokens = prompt_tokens, completion_tokens
        self.finish_reason = "stop" if self._scanner.stopped else finish_reason
        self.done = True
        self._send(_END)

    def fail(self, error: BaseException) -> None:
        """The reply could not be made; `pieces` raises `error`."""
        self.done = True
        self._send(error)

    def _send(self, item: object) -> None:
        try:
            self._loop.call_soon_threadsafe(self._items.put_nowait, item)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            pass


class Scheduler(Protocol):
    """What the HTTP layer speaks to."""

    def submit(self, job: Job) -> Generation:
        """Queue `job`; raises QueueFull when the queue is at its limit. Call on the event loop."""
        ...

    def metrics(self) -> dict[str, float]:
        """At least queue_depth, active_rows, tokens_total and tokens_per_second."""
        ...

    def close(self) -> None:
        """Stop the workers; jobs still queued fail."""
        ...
