"""Mixed-persona batches: several conversations, each with its own persona, decoded together.

Each conversation is a row (persona.engine.rows) with its own cache, prefilled with
`[P_row ; rendered conversation]` through the backend; then every step runs one decode call for all
rows still going. Each row computes what it would alone (in float32). The server's scheduler
(persona.serve) runs the same rows, with requests joining and leaving between steps.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from persona.engine.chat import ChatEngine
from persona.engine.config import GenerationConfig
from persona.engine.contract import Request
from persona.engine.rows import BareRow, Row, advance, prefill_bare
from persona.errors import ConfigError
from persona.prompt.render import Message
from persona.prompt.softprompt import SoftPrompt


@dataclass
class BatchRequest:
    messages: Sequence[Message]
    persona: SoftPrompt | None = None
    system: str | None = None


@dataclass
class BatchResult:
    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"  # stop | length


def generate_batch(
    engine: ChatEngine, requests: Sequence[BatchRequest], config: GenerationConfig | None = None
) -> tuple[list[BatchResult], float]:
    """Reply to every request in one batched decode; returns the results and the seconds taken.

    With a seed, row i samples with seed + i (rows with one seed would draw the same numbers)."""
    config = config or GenerationConfig()
    if not requests:
        raise ConfigError("the batch is empty; pass at least one conversation")
    start = time.perf_counter()
    backend = engine.backend
    rows: list[Row] = []
    for offset, request in enumerate(requests):
        row_config = config
        if config.seed is not None:
            row_config = dataclasses.replace(config, seed=config.seed + offset)
        # the engine's own checks, rendering and window fit, as for a chat turn or a server request
        prepared = Request(request.messages, request.persona, row_config, request.system)
        ids, _ = engine.prepare(prepared)
        row = Row(
            backend.new_cache(), list(ids), ids, row_config, engine.stop_ids, device=backend.device
        )
        persona = request.persona
        prompt = persona.embeddings if persona is not None else None
        kind = persona.kind if persona is not None else "soft"
        row.logits = backend.prefill(row.cache, ids, prompt, kind=kind)
        if prepared.bare_ids is not None:  # a strength other than 1: the bare row beside it
            row.bare = BareRow(backend.new_cache(), [], prepared.bare_ids)
            prefill_bare(backend, row)
        rows.append(row)
    running = rows
    while running:
        tokens = [row.choose() for row in running]
        going = [
            (row, token) for row, token in zip(running, tokens, strict=True) if not row.finished
        ]
        running = [row for row, _ in going]
        if running:
            advance(backend, running, [token for _, token in going])  # type: ignore[misc]
    results = [
        BatchResult(
            text=engine.tokenizer.decode(row.token_ids, skip_special_tokens=True),
            token_ids=row.token_ids,
            finish_reason=row.finish_reason,
        )
        for row in rows
    ]
    return results, time.perf_counter() - start
