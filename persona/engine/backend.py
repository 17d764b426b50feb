"""The backend contract: what the engine, the batched rows and the server need of a model.

Every engine that runs a persona speaks only this small interface, whatever computes underneath:

- `embed(ids)`: the input embeddings of token ids, `(T, D)`;
- `new_cache()`: an empty KV cache for one conversation (one *row*);
- `prefill(cache, ids, prompt)`: append `[soft prompt ; ids]` to a row's cache, return the logits
  of the last position. This is where a persona's soft prompt is put in front of the conversation
  (through `persona.prompt.inject.prepend_prompt`, the one place that builds `[P ; E[ids]]`);
- `decode(tokens, caches)`: one decode step for a batch of rows, one token each, every row with its
  own cache (so with its own persona and length); returns the logits of each row;
- `crop(cache, n)`: keep a row's first n positions; `copy(cache)`: an independent copy of it;
  `cache_bytes(cache)`: the memory it holds.

Implementations: `persona.engine.torch_backend.TorchBackend` (persona's own decoder and any
transformers causal LM) and `persona.engine.llamacpp_backend.LlamaCppBackend` (one row at a time).
`backend_for(loaded)` picks the one for a loaded model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from persona.engine.llamacpp_backend import LlamaCppBackend
from persona.engine.torch_backend import TorchBackend
from persona.model.llamacpp import LlamaCppModel
from persona.model.loader import LoadedModel


@runtime_checkable
class Cache(Protocol):
    """A row's keys and values so far: `[soft prompt ; tokens]` positions."""

    def get_seq_length(self) -> int: ...


class Backend(Protocol):
    """A frozen causal LM that runs rows of `[soft prompt ; token ids]` (see the module docstring)."""

    max_rows: int  # how many rows one decode() call can take (1: one conversation at a time)
    device: torch.device  # where its logits are (rows keep their sampling state there too)

    def embed(self, ids: Sequence[int]) -> torch.Tensor:
        """Input embeddings of `ids`: (T, D), in the dtype the model computes in."""
        ...

    def new_cache(self) -> Cache: ...

    def prefill(
        self, cache: Cache, ids: Sequence[int], prompt: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Append `[prompt ; ids]` to `cache` (a prompt only into an empty cache); logits (V,) of
        the last position."""
        ...

    def decode(self, tokens: Sequence[int], caches: Sequence[Cache]) -> torch.Tensor:
        """Append tokens[i] to caches[i] for every row at once; logits (B, V)."""
        ...

    def crop(self, cache: Cache, length: int) -> None:
        """Keep the first `length` positions of `cache`."""
        ...

    def copy(self, cache: Cache) -> Cache: ...

    def cache_bytes(self, cache: Cache) -> int:
        """Memory the cache holds (what a cache of caches is bounded by)."""
        ...


def backend_for(loaded: LoadedModel) -> Backend:
    """The backend that runs `loaded.model`."""
    if isinstance(loaded.model, LlamaCppModel):
        return LlamaCppBackend(loaded.model)
    return TorchBackend(loaded.model)
