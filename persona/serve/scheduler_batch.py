"""BatchScheduler: the server's jobs on the engine's continuous batching (persona.engine.scheduler).

Many requests, each with its own persona and sampling settings, decode together, one batched
forward per step; see persona.engine.scheduler for how rows join, leave and reuse cached prefixes.
This module only translates: a Job into a Request, the rows' text into the job's Generation.
"""

from __future__ import annotations

from persona.engine.chat import ChatEngine
from persona.engine.scheduler import DEFAULT_PREFILL_CHUNK, DEFAULT_PREFIX_CACHE_BYTES, Request
from persona.engine.scheduler import Scheduler as Rows
from persona.errors import ConfigError, PersonaError
from persona.serve.scheduler import Generation, Job

DEFAULT_MAX_ROWS = 32


class BatchScheduler:
    def __init__(
        self,
        engine: ChatEngine,
        *,
        max_queue: int = 64,
        max_rows: int = DEFAULT_MAX_ROWS,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
        prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES,
    ) -> None:
        if max_queue < 0:
            raise ConfigError(f"max_queue={max_queue!r} must be 0 or more")
        self.engine = engine
        self.rows = Rows(
            engine,
            max_rows=max_rows,
            max_queue=max_queue,
            prefill_chunk=prefill_chunk,
            prefix_cache_bytes=prefix_cache_bytes,
        )

    def submit(self, job: Job) -> Generation:
        generation = Generation(job.stop)
        ids = None
        if job.raw_prompt is not None:
            ids = list(self.engine.tokenizer.encode(job.raw_prompt, add_special_tokens=False))
            if not ids:
                raise ConfigError("prompt is empty; send some text to continue")
        request = Request(job.messages, job.persona, job.config, job.system, ids)
        virtual = job.persona.num_virtual_tokens if job.persona is not None else 0
        self.rows.submit(request, _Sink(generation, virtual), cancelled=generation.stopping)
        return generation

    def metrics(self) -> dict[str, float]:
        return self.rows.metrics()

    def close(self) -> None:
        self.rows.close()


class _Sink:
    """A row's text into the job's Generation; a completed stop string ends the row."""

    def __init__(self, generation: Generation, virtual_tokens: int) -> None:
        self.generation = generation
        self.virtual_tokens = virtual_tokens

    def piece(self, text: str) -> None:
        self.generation.emit(text)  # sets `stopping` on a stop string: the row ends next step

    def finish(self, reason: str, prompt_tokens: int, completion_tokens: int) -> None:
        counted = prompt_tokens + self.virtual_tokens if prompt_tokens else 0
        self.generation.finish(counted, completion_tokens, reason)

    def error(self, error: PersonaError) -> None:
        self.generation.fail(error)
