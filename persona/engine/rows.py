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
from persona.engine.sampling import Sampler


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

    def __post_init__(self) -> None:
        self.sampler = Sampler(self.config, self.device)
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
        token = self.sampler.next_token(self.logits.view(1, -1), self.seen)
        if token in self.stop_ids:
            self.finish_reason = "stop"
            return None
        self.token_ids.append(token)
        self.seen = torch.cat([self.seen, self.seen.new_tensor([[token]])], dim=1)  # (1, S+1)
        if len(self.token_ids) >= self.config.max_new_tokens:
            self.finish_reason = "length"
        return token


def advance(backend: AnyBackend, rows: Sequence[Row], tokens: Sequence[int]) -> None:
    """Run tokens[i] through rows[i]'s cache, every row in as few decode calls as the backend allows."""
    for begin in range(0, len(rows), backend.max_rows):
        chunk = rows[begin : begin + backend.max_rows]
        logits = backend.decode(tokens[begin : begin + len(chunk)], [row.cache for row in chunk])
        for index, row in enumerate(chunk):  # logits (B, V)
            row.logits = logits[index]
            row.ids.append(tokens[begin + index])


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading ids a and b share."""
    limit = min(len(a), len(b))
    index = 0
    while index < limit and a[index] == b[index]:
        index += 1
    return index
