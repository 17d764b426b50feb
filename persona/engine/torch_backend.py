"""The backend contract (persona.engine.backend) on a PyTorch model in this process.

Two kinds of model stand behind it: persona's own Llama decoder (`persona.model.llama`, what chat
loads for Llama-family checkpoints, int8 or float32) and any transformers causal LM (everything
else, and training's model). Both take `model(input_ids=... | inputs_embeds=..., cache=...,
logits_to_keep=1)`; they differ in their cache class and in what a batched decode step can do.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from persona.model.calling import cache_argument_name
from persona.model.device import model_device
from persona.model.llama import KVCache, LlamaDecoder
from persona.model.llama_rows import decode_rows
from persona.prompt.deep import KVLayout, split_prefix
from persona.prompt.inject import prepend_prompt


class TorchBackend:
    name = "torch"

    def __init__(self, model: Any) -> None:
        self.model = model
        self.native = isinstance(model, LlamaDecoder)
        self.layout = KVLayout.of_config(model.config)
        self.cache_argument = "cache" if self.native else cache_argument_name(model)
        self.max_rows = 64
        self.device = model_device(model)

    def embed(self, ids: Sequence[int]) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.get_input_embeddings()(
                torch.tensor(list(ids), dtype=torch.long)
            )  # (T, D)

    def new_cache(self) -> Any:
        if self.native:
            return KVCache()
        from transformers import DynamicCache  # only models transformers itself runs get here

        return DynamicCache()

    def prefill(
        self,
        cache: Any,
        ids: Sequence[int],
        prompt: torch.Tensor | None = None,
        *,
        kind: str = "soft",
    ) -> torch.Tensor:
        input_ids = torch.tensor([list(ids)], dtype=torch.long, device=self.device)  # (1, T)
        with torch.inference_mode():
            if prompt is None:
                return self._last_logits(cache, input_ids=input_ids)[0]  # (V,)
            if cache.get_seq_length() != 0:
                raise ValueError("a soft prompt goes in front of a conversation: prefill it first")
            if kind == "deep":
                self._put_prefix(cache, prompt)
                return self._last_logits(cache, input_ids=input_ids)[0]  # (V,)
            embeds = self.model.get_input_embeddings()(input_ids)  # (1, T, D)
            embeds, _, _ = prepend_prompt(prompt, embeds)  # (1, N+T, D)
            return self._last_logits(cache, inputs_embeds=embeds)[0]  # (V,)

    def _put_prefix(self, cache: Any, prompt: torch.Tensor) -> None:
        """A deep prompt (N, W) into an empty cache: its keys and values at every layer."""
        if self.layout is None:
            raise ValueError(
                "this model names no plain KV cache layout; it cannot run a deep prompt"
            )
        weight = self.model.get_input_embeddings().weight
        prompt = prompt.to(dtype=weight.dtype, device=self.device)  # (N, W)
        for layer, (keys, values) in enumerate(split_prefix(prompt, self.layout)):
            if self.native:  # (1, H_kv, N, d) each
                cache.update(layer, keys, values, 0)
            else:
                cache.update(keys, values, layer)

    def decode(self, tokens: Sequence[int], caches: Sequence[Any]) -> torch.Tensor:
        with torch.inference_mode():
            if self.native and len(caches) > 1:
                rows = torch.tensor(list(tokens), device=self.device)  # (B,)
                return decode_rows(self.model, rows, caches)  # (B, V)
            rows = [
                self._last_logits(cache, input_ids=torch.tensor([[token]], device=self.device))
                for token, cache in zip(tokens, caches, strict=True)
            ]
            return torch.cat(rows, dim=0)  # (B, V)

    def crop(self, cache: Any, length: int) -> None:
        surplus = cache.get_seq_length() - length
        if surplus > 0:
            cache.crop(-surplus)  # transformers' caches take a count to drop, not a length

    def cache_bytes(self, cache: Any) -> int:
        if isinstance(cache, KVCache):
            return cache.nbytes
        tensors = [  # transformers' DynamicCache: keys and values of each layer
            tensor
            for layer in getattr(cache, "layers", [])
            for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None))
            if isinstance(tensor, torch.Tensor)
        ]
        return sum(tensor.untyped_storage().nbytes() for tensor in tensors)

    def copy(self, cache: Any) -> Any:
        return copy.deepcopy(cache)

    def _last_logits(self, cache: Any, **inputs: torch.Tensor) -> torch.Tensor:
        out = self.model(**inputs, use_cache=True, logits_to_keep=1, **{self.cache_argument: cache})
        return out.logits[:, -1, :]  # (1, V)
