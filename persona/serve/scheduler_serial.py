"""SerialScheduler: one worker thread, one reply at a time, through `ChatEngine.stream`.

The simplest scheduler behind the contract of persona.serve.scheduler: jobs wait in a bounded
queue and the engine's own per-persona prefix caches make a conversation's next turn cheap.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from typing import Any

from persona.engine.chat import ChatEngine
from persona.errors import ConfigError
from persona.serve.metrics import TokenRate
from persona.serve.scheduler import Generation, Job, QueueFull

ROWS = 1  # replies generated at once
CLOSE_WAIT_S = 10.0  # how long close() waits for the reply in progress to stop


class SerialScheduler:
    def __init__(self, engine: ChatEngine, *, max_queue: int = 16) -> None:
        if max_queue < 0:
            raise ConfigError(f"max_queue={max_queue!r} must be 0 or more")
        self.engine = engine
        self.max_queue = max_queue
        self.rate = TokenRate()
        self._jobs: queue.Queue[tuple[Job, Generation] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._waiting = 0  # submitted, not started
        self._current: Generation | None = None
        self._seconds_per_job = 1.0  # a running average, for Retry-After
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="persona-serial", daemon=True)
        self._worker.start()

    # ---- the contract ---------------------------------------------------------------------------

    def submit(self, job: Job) -> Generation:
        if job.raw_prompt is not None:  # ChatEngine renders conversations only
            raise ConfigError(
                "raw-text completions need the batch scheduler (persona serve --scheduler batch); "
                "use /v1/chat/completions"
            )
        with self._lock:
            if self._closed:
                raise QueueFull("the server is shutting down", retry_after_s=1)
            ahead = self._waiting + (self._current is not None)
            if ahead >= ROWS + self.max_queue:
                wait = math.ceil(self._seconds_per_job * (ahead - ROWS + 1))
                raise QueueFull(
                    f"the server is busy ({ahead} requests ahead, queue limit {self.max_queue}); "
                    "retry shortly",
                    retry_after_s=max(1, min(wait, 60)),
                )
            self._waiting += 1
            generation = Generation(job.stop)
            self._jobs.put((job, generation))
        return generation

    def metrics(self) -> dict[str, float]:
        with self._lock:
            active = float(self._current is not None)
            waiting = float(self._waiting)
        return {
            "queue_depth": waiting,
            "active_rows": active,
            "tokens_total": float(self.rate.total),
            "tokens_per_second": self.rate.per_second(),
        }

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._current is not None:
                self._current.cancel()
        self._jobs.put(None)
        self._worker.join(timeout=CLOSE_WAIT_S)
        while True:  # what never started fails, so that no client waits for it
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[1].fail(QueueFull("the server is shutting down"))

    # ---- the worker -----------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, generation = item
            with self._lock:
                self._waiting -= 1
                closed = self._closed
                if not closed:
                    self._current = generation
            if closed:  # what had not started when the server began to stop fails at once
                generation.fail(QueueFull("the server is shutting down"))
                continue
            start = time.monotonic()
            try:
                self._run(job, generation)
            finally:
                with self._lock:
                    self._current = None
                    self._seconds_per_job = 0.8 * self._seconds_per_job + 0.2 * (
                        time.monotonic() - start
                    )

    def _run(self, job: Job, generation: Generation) -> None:
        if generation.stopping.is_set():  # the client left while it waited
            generation.finish(0, 0, "cancelled")
            return
        counted = 0
        try:
            pieces = self.engine.stream(
                job.messages,
                job.persona,
                job.config,
                system=job.system,
                cancel=generation.stopping,
            )
            for piece in pieces:
                counted = self._count(counted)
                generation.emit(piece)  # a stop string sets `stopping`: the engine ends next step
            counted = self._count(counted)
            stats: Any = self.engine.last
            virtual = job.persona.num_virtual_tokens if job.persona is not None else 0
            generation.finish(stats.prompt_tokens + virtual, stats.new_tokens, stats.finish_reason)
        except Exception as exc:  # a PersonaError, or a bug: either way the worker goes on
            generation.fail(exc)

    def _count(self, counted: int) -> int:
        tokens = self.engine.last.new_tokens  # the engine updates its stats as it goes
        self.rate.add(tokens - counted)
        return tokens
