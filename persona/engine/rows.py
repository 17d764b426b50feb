"""A row: one conversation being answered, and one decode step for many rows at once.

The single-conversation engine (persona.engine.chat) runs one row; mixed-persona batches
(persona.engine.batch) and the server's scheduler run many, each with its own persona, cache and
sampling settings. All of them choose tokens and advance caches through these two pieces, so a row
computes the same whether it decodes alone or beside others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from persona.engine.backend import AnyBackend, Cache
from persona.engine.config import GenerationConfig
from persona.engine.guidance import guided_logits
from persona.engine.sampling import Sampler


@dataclass
class BareRow:
    """The conversation without its persona, beside a guided row (persona.engine.guidance): its
    own cache, fed the same reply tokens."""

    cache: Cache  # [ids] so far, no prompt in front
    ids: list[int]  # tokens held in the cache
    prompt: list[int]  # the whole bare rendering of the conversation
    logits: torch.Tensor | None = None  # (V,) once prefilled


@dataclass
class Row:
    cache: Cache  # [soft prompt ; ids] so far
    ids: list[int]  # tokens held in the cache after the soft prompt
    prompt: list[int]  # the whole rendered prompt (the cache may hold only its start so far)
    config: GenerationConfig
    stop_ids: set[int]
    logits: torch.Tensor | None = None  # (V,) scores of the next token, once prefilled
    sampler: Sampler = field(init=False)
    seen: torch.Tensor = field(init=False)  # (1, S) ids the repetition penalty covers
    token_ids: list[int] = field(default_factory=list)  # the reply so far, stop token excluded
    finish_reason: str = ""  # "" while it runs; then stop | length | cancelled

    device: torch.device | str = "cpu"  # where the backend's logits are
    bare: BareRow | None = None  # set where config.strength is not 1 and there is a persona

    def __post_init__(self) -> None:
        self.sampler = Sampler(self.config, self.device)
        # every id of the conversation, end-of-turn tokens included, as transformers and vLLM
        # count them: leaving those out lets replies end sooner (benchmarks/endings.py), but
        # vLLM's sampler would still penalise them, and its replies would no longer equal ours
        self.seen = torch.tensor([self.prompt], dtype=torch.long, device=self.device)  # (1, S)

    @property
    def finished(self) -> bool:
        return bool(self.finish_reason)

    def choose(self) -> int | None:
        """The next token from `logits`, or None where the row stops (an end-of-turn token).

        After the token that reaches max_new_tokens the row is finished ("length"): that token is
        part of the reply but is not run through the model.
        """
        assert self.logits is not None, "prefill the row before choosing its tokens"
        logits = self.logits.view(1, -1)  # (1, V)
        if self.bare is not None:
            assert self.bare.logits is not None, "prefill the bare row before choosing tokens"
            logits = guided_logits(logits, self.bare.logits.view(1, -1), self.config.strength)
        token = self.sampler.next_token(logits, self.seen)
        if token in self.stop_ids:
            self.finish_reason = "stop"
            return None
        self.token_ids.append(token)
        self.seen = torch.cat([self.seen, self.seen.new_tensor([[token]])], dim=1)  # (1, S+1)
        if len(self.token_ids) >= self.config.max_new_tokens:
            self.finish_reason = "length"
        return token


def advance(backend: AnyBackend, rows: Sequence[Row], tokens: Sequence[int]) -> None:
    """Run tokens[i] through rows[i]'s cache (and its bare row's, where it has one), every row in
    as few decode calls as the backend allows: a bare row rides in the same batch as its own."""
    targets: list[Row | BareRow] = [*rows, *(row.bare for row in rows if row.bare is not None)]
    fed = [
        *tokens,
        *(token for row, token in zip(rows, tokens, strict=True) if row.bare is not None),
    ]
    for begin in range(0, len(targets), backend.max_rows):
        chunk = targets[begin : begin + backend.max_rows]
        logits = backend.decode(fed[begin : begin + len(chunk)], [row.cache for row in chunk])
        for index, row in enumerate(chunk):  # logits (B, V)
            row.logits = logits[index]
            row.ids.append(fed[begin + index])


def prefill_bare(backend: AnyBackend, row: Row) -> None:
    """Encode what the row's bare companion has not encoded yet (all at once: the bare rendering
    runs beside the persona's, which the schedulers chunk)."""
    bare = row.bare
    if bare is None or len(bare.ids) >= len(bare.prompt):
        return
    chunk = bare.prompt[len(bare.ids) :]
    bare.logits = backend.prefill(bare.cache, chunk, None)
    bare.ids.extend(chunk)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading ids a and b share."""
    limit = min(len(a), len(b))
    index = 0
    while index < limit and a[index] == b[index]:
        index += 1
    return index
