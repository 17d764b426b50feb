"""The backend contract (persona.engine.backend) on llama.cpp: one row at a time.

llama.cpp holds one sequence here (`persona.model.llamacpp`): a cache that is not the sequence's
current owner reports length 0 and its conversation is encoded again. So `decode` takes one row
(`max_rows = 1`; the server runs this backend one request at a time) and `copy` is refused: a
cache cannot be branched. The soft prompt goes in as one embeddings batch, the ids after it, which
under causal attention computes the same as one pass over `[P ; E[ids]]`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from persona.errors import ConfigError
from persona.model.llamacpp import LlamaCppCache, LlamaCppModel
from persona.prompt.layout import KVLayout


class LlamaCppBackend:
    name = "llama"
    layout: KVLayout | None = (
        None  # input-layer prompts only: llama.cpp takes no keys and values from outside
    )
    max_rows = 1
    device = torch.device("cpu")  # llama.cpp's logits are copied out to the CPU

    def __init__(self, model: LlamaCppModel) -> None:
        self.model = model

    def embed(self, ids: Sequence[int]) -> torch.Tensor:
        raise ConfigError(
            "the llama backend does not expose its input embeddings; use --backend torch"
        )

    def new_cache(self) -> LlamaCppCache:
        return self.model.new_cache()

    def prefill(
        self,
        cache: LlamaCppCache,
        ids: Sequence[int],
        prompt: torch.Tensor | None = None,
        *,
        kind: str = "soft",
    ) -> torch.Tensor:
        if kind != "soft":
            raise ConfigError(
                "the llama backend takes input-layer soft prompts only, not deep ones; use --backend torch"
            )
        if prompt is not None:
            if cache.get_seq_length() != 0:
                raise ValueError("a soft prompt goes in front of a conversation: prefill it first")
            self.model(inputs_embeds=prompt.unsqueeze(0), cache=cache)  # (1, N, D)
        out = self.model(input_ids=torch.tensor([list(ids)], dtype=torch.long), cache=cache)
        return out.logits[0, -1]  # (V,)

    def decode(self, tokens: Sequence[int], caches: Sequence[LlamaCppCache]) -> torch.Tensor:
        if len(caches) != 1:
            raise ConfigError(
                "the llama backend decodes one conversation at a time; use --backend torch for batches"
            )
        out = self.model(input_ids=torch.tensor([[tokens[0]]], dtype=torch.long), cache=caches[0])
        return out.logits[:, -1, :]  # (1, V)

    def crop(self, cache: LlamaCppCache, length: int) -> None:
        cache.crop(length)

    def cache_bytes(self, cache: LlamaCppCache) -> int:
        return 0  # the keys and values live in llama.cpp's own memory, sized at load

    def copy(self, cache: LlamaCppCache) -> LlamaCppCache:
        raise ConfigError("the llama backend holds one sequence; its cache cannot be copied")
