"""The backend contract: what the engine, the batched rows and the server need of a model.

Every engine that runs a persona speaks only this small interface, whatever computes underneath:

- `embed(ids)`: the input embeddings of token ids, `(T, D)`;
- `new_cache()`: an empty KV cache for one conversation (one *row*);
- `prefill(cache, ids, prompt, kind=)`: append `[soft prompt ; ids]` to a row's cache, return the
  logits of the last position. This is where a persona's prompt is put in front of the
  conversation: a soft one through `persona.prompt.inject.prepend_prompt`, the one place that
  builds `[P ; E[ids]]`; a deep one (`kind="deep"`) as keys and values put straight into every
  layer of the empty cache (`persona.prompt.deep`), where `layout` says the backend can;
- `decode(tokens, caches)`: one decode step for a batch of rows, one token each, every row with its
  own cache (so with its own persona and length); returns the logits of each row;
- `crop(cache, n)`: keep a row's first n positions; `copy(cache)`: an independent copy of it;
  `cache_bytes(cache)`: the memory it holds.

Implementations, each checked against `Backend` by the type checker (`backend_for` returns them as
one) and by tests/test_contract.py:
- `NativeBackend` and `TransformersBackend` (persona.engine.torch_backend): persona's own decoder,
  and any transformers causal LM;
- `LlamaCppBackend` (persona.engine.llamacpp_backend): llama.cpp, one row at a time;
- `EmbeddingBackend` (persona.engine.vllm.model): the vLLM gateway's, which only embeds.
`backend_for(loaded)` picks the one for a loaded model; `check_runs` refuses, in one line, a
persona a backend cannot run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch

from persona.engine.llamacpp_backend import LlamaCppBackend
from persona.engine.torch_backend import torch_backend
from persona.errors import PromptMismatchError
from persona.model.fingerprint import Fingerprint
from persona.model.llamacpp import LlamaCppModel
from persona.model.loader import LoadedModel
from persona.prompt.deep import KVLayout
from persona.prompt.softprompt import SoftPrompt


@runtime_checkable
class Cache(Protocol):
    """A row's keys and values so far: `[soft prompt ; tokens]` positions."""

    def get_seq_length(self) -> int: ...


CacheT = TypeVar("CacheT", bound=Cache)


class Backend(Protocol[CacheT]):
    """A frozen causal LM that runs rows of `[soft prompt ; token ids]` (see the module docstring),
    each row's keys and values in a cache of the backend's own class, `CacheT`."""

    name: str  # what --backend calls it
    max_rows: int  # how many rows one decode() call can take (1: one conversation at a time)
    device: torch.device  # where its logits are (rows keep their sampling state there too)
    layout: KVLayout | None  # the KV cache a deep prompt must fit; None: soft prompts only

    def embed(self, ids: Sequence[int]) -> torch.Tensor:
        """Input embeddings of `ids`: (T, D), in the dtype the model computes in."""
        ...

    def new_cache(self) -> CacheT: ...

    def prefill(
        self,
        cache: CacheT,
        ids: Sequence[int],
        prompt: torch.Tensor | None = None,
        *,
        kind: str = "soft",
    ) -> torch.Tensor:
        """Append `[prompt ; ids]` to `cache` (a prompt only into an empty cache); logits (V,) of
        the last position. `kind` is the prompt's: soft (N, D) or deep (N, W)."""
        ...

    def decode(self, tokens: Sequence[int], caches: Sequence[CacheT]) -> torch.Tensor:
        """Append tokens[i] to caches[i] for every row at once; logits (B, V)."""
        ...

    def crop(self, cache: CacheT, length: int) -> None:
        """Keep the first `length` positions of `cache`."""
        ...

    def copy(self, cache: CacheT) -> CacheT: ...

    def cache_bytes(self, cache: CacheT) -> int:
        """Memory the cache holds (what a cache of caches is bounded by)."""
        ...


# A backend whose cache class the caller does not name: rows hand each backend back the caches it
# made, so the engine and the scheduler hold "some backend and its caches" (Python has no
# existential types; Any stands for the one cache class of that backend).
AnyBackend = Backend[Any]


def backend_for(loaded: LoadedModel) -> AnyBackend:
    """The backend that runs `loaded.model`."""
    if isinstance(loaded.model, LlamaCppModel):
        return LlamaCppBackend(loaded.model)
    return torch_backend(loaded.model)


def check_runs(
    persona: SoftPrompt, fingerprint: Fingerprint, layout: KVLayout | None, backend: str
) -> None:
    """Refuse, in one line, a persona trained for another model, or a deep one where the backend
    named `backend` takes input-layer prompts only (`layout` None)."""
    if persona.kind == "deep" and layout is None:
        raise PromptMismatchError(
            f"persona {persona.name!r} is a deep prompt (keys and values at every layer), which the "
            f"{backend} backend cannot run: it takes input-layer soft prompts only; use "
            "--backend torch, or train a soft persona (persona train --kind soft)"
        )
    persona.check_fits(fingerprint, layout)
