"""SerialRunner: the generation contract (persona.engine.contract) one reply at a time.

One worker thread takes requests from a bounded queue and runs each through `ChatEngine.run`, whose
per-persona prefix caches make a conversation's next turn cheap. This is what a backend with one
sequence (llama.cpp) and `persona serve --scheduler serial` run, and what the chat client runs on a
model of its own.
"""

from __future__ import annotations

import math
import queue
import threading
import time

from persona.engine import cores
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
from persona.engine.rate import TokenRate
from persona.errors import ConfigError, PersonaError, QueueFull, first_line

ROWS = 1  # replies generated at once
CLOSE_WAIT_S = 10.0  # how long close() waits for the reply in progress to stop


class SerialRunner:
    def __init__(self, engine: ChatEngine, *, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        if max_queue < 0:
            raise ConfigError(f"max_queue={max_queue!r} must be 0 or more")
        self.engine = engine
        self.name = engine.backend.name
        self.layout = engine.backend.layout
        self.max_queue = max_queue
        self.rate = TokenRate()
        self.requests_total = 0
        self._tickets: queue.Queue[Ticket | None] = queue.Queue()
        self._lock = threading.Lock()
        self._waiting = 0  # submitted, not started
        self._current: Ticket | None = None
        self._seconds_per_request = 1.0  # a running average, for Retry-After
        self._closed = False
        self._threads = cores.threads_now()  # what the worker takes (persona.engine.cores)
        self._worker = threading.Thread(target=self._work, name="persona-serial", daemon=True)
        self._worker.start()

    # ---- the contract ---------------------------------------------------------------------------

    def submit(
        self, request: Request, sink: Sink, cancelled: threading.Event | None = None
    ) -> Ticket:
        self.engine.prepare(request)  # a request that cannot run is refused here, at once
        cancelled = cancelled if cancelled is not None else threading.Event()
        ticket = Ticket(request, watch_stops(request, sink, cancelled), cancelled)
        with self._lock:
            if self._closed:
                raise QueueFull(SHUTTING_DOWN, retry_after_s=1)
            ahead = self._waiting + (self._current is not None)
            if ahead >= ROWS + self.max_queue:
                wait = math.ceil(self._seconds_per_request * (ahead - ROWS + 1))
                raise QueueFull(
                    f"the server is busy ({ahead} requests ahead, queue limit {self.max_queue}); "
                    "retry shortly",
                    retry_after_s=max(1, min(wait, 60)),
                )
            self._waiting += 1
            self.requests_total += 1
            self._tickets.put(ticket)
        return ticket

    def metrics(self) -> dict[str, float]:
        with self._lock:
            active = float(self._current is not None)
            waiting = float(self._waiting)
        return {
            "queue_depth": waiting,
            "active_rows": active,
            "tokens_total": float(self.rate.total),
            "requests_total": float(self.requests_total),
            "tokens_per_second": self.rate.per_second(),
        }

    def persona_kv(self, sha256: str) -> bytes | None:
        return None  # the model runs here (or on the server asked): nothing fetches keys from it

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._current is not None:
                self._current.cancel()
        self._tickets.put(None)
        self._worker.join(timeout=CLOSE_WAIT_S)
        while True:  # what never started fails, so that no client waits for it
            try:
                ticket = self._tickets.get_nowait()
            except queue.Empty:
                break
            if ticket is not None:
                deliver(ticket, "error", QueueFull(SHUTTING_DOWN))

    # ---- the worker -----------------------------------------------------------------------------

    def _work(self) -> None:
        cores.take(self._threads)
        while True:
            ticket = self._tickets.get()
            if ticket is None:
                return
            with self._lock:
                self._waiting -= 1
                closed = self._closed
                if not closed:
                    self._current = ticket
            if closed:  # what had not started when the server began to stop fails at once
                deliver(ticket, "error", QueueFull(SHUTTING_DOWN))
                continue
            start = time.monotonic()
            try:
                self._run(ticket)
            finally:
                with self._lock:
                    self._current = None
                    self._seconds_per_request = 0.8 * self._seconds_per_request + 0.2 * (
                        time.monotonic() - start
                    )

    def _run(self, ticket: Ticket) -> None:
        if ticket.cancelled.is_set():  # the client left while it waited
            deliver(ticket, "finish", "cancelled", 0, 0)
            return
        counted = 0
        try:
            for piece in self.engine.run(ticket.request, cancel=ticket.cancelled):
                counted = self._count(counted)
                deliver(ticket, "piece", piece)  # a stop string cancels: the engine ends next step
            counted = self._count(counted)
            stats = self.engine.last
            reason = stats.finish_reason
            deliver(ticket, "finish", reason, prompt_tokens(ticket.request), stats.new_tokens)
        except PersonaError as exc:
            deliver(ticket, "error", exc)
        except Exception as exc:  # noqa: BLE001 - a bug fails its request; the worker goes on
            deliver(ticket, "error", PersonaError(f"{type(exc).__name__}: {first_line(exc)}"))

    def _count(self, counted: int) -> int:
        tokens = self.engine.last.new_tokens  # the engine updates its stats as it goes
        self.rate.add(tokens - counted)
        return tokens
