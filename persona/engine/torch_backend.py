"""The backend contract (persona.engine.backend) on a PyTorch model in this process.

Two kinds of model stand behind it: persona's own Llama decoder (`persona.model.llama`, what chat
loads for Llama-family checkpoints, int8 or float32) and any transformers causal LM (everything
else, and training's model), one class each: `NativeBackend` and `TransformersBackend`. Both take
`model(input_ids=... | inputs_embeds=..., cache=..., logits_to_keep=1)`; they differ in their
cache class and in what a batched decode step can do. `torch_backend(model)` picks one.
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
from persona.model.quantize import exact_activations
from persona.prompt.deep import KVLayout, split_prefix
from persona.prompt.inject import prepend_prompt


class _TorchBackend:
    """What both kinds of PyTorch model share: embedding, prefill, cropping, copying."""

    name = "torch"
    cache_argument = "cache"  # the keyword the model takes its cache by

    def __init__(self, model: Any) -> None:
        self.model = model
        self.layout = KVLayout.of_config(model.config)
        self.max_rows = 64
        self.device = model_device(model)

    def embed(self, ids: Sequence[int]) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.get_input_embeddings()(
                torch.tensor(list(ids), dtype=torch.long)
            )  # (T, D)

    def prefill(
        self,
        cache: Any,
        ids: Sequence[int],
        prompt: torch.Tensor | None = None,
        *,
        kind: str = "soft",
    ) -> torch.Tensor:
        input_ids = torch.tensor([list(ids)], dtype=torch.long, device=self.device)  # (1, T)
        with torch.inference_mode(), exact_activations():  # int8: a prompt's activations exact
            if prompt is None:
                return self._last_logits(cache, **self._prompt_inputs(input_ids))[0]  # (V,)
            if cache.get_seq_length() != 0:
                raise ValueError("a soft prompt goes in front of a conversation: prefill it first")
            if kind == "deep":
                self._put_prefix(cache, prompt)
                return self._last_logits(cache, **self._prompt_inputs(input_ids))[0]  # (V,)
            embeds = self.model.get_input_embeddings()(input_ids)  # (1, T, D)
            embeds, _, _ = prepend_prompt(prompt, embeds)  # (1, N+T, D)
            return self._last_logits(cache, inputs_embeds=embeds)[0]  # (V,)

    def _prompt_inputs(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's inputs for encoding prompt ids (1, T)."""
        return {"input_ids": input_ids}

    def _put_prefix(self, cache: Any, prompt: torch.Tensor) -> None:
        """A deep prompt (N, W) into an empty cache: its keys and values at every layer."""
        if self.layout is None:
            raise ValueError(
                "this model names no plain KV cache layout; it cannot run a deep prompt"
            )
        prompt = prompt.to(dtype=self.activation_dtype(), device=self.device)  # (N, W)
        for layer, (keys, values) in enumerate(split_prefix(prompt, self.layout)):
            self._put_layer(cache, layer, keys, values)  # (1, H_kv, N, d) each

    def _put_layer(self, cache: Any, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        raise NotImplementedError

    def activation_dtype(self) -> torch.dtype:
        """The dtype the model computes in: what its input embedding gives for one token (int8's
        float16 table gives float32; reading its `.weight` would widen the whole table)."""
        with torch.inference_mode():
            token = torch.zeros(1, dtype=torch.long, device=self.device)
            return self.model.get_input_embeddings()(token).dtype

    def decode(self, tokens: Sequence[int], caches: Sequence[Any]) -> torch.Tensor:
        """One step for every row, one forward each (what a model without batched rows does)."""
        with torch.inference_mode():
            rows = [
                self._last_logits(cache, input_ids=torch.tensor([[token]], device=self.device))
                for token, cache in zip(tokens, caches, strict=True)
            ]
            return torch.cat(rows, dim=0)  # (B, V)

    def crop(self, cache: Any, length: int) -> None:
        surplus = cache.get_seq_length() - length
        if surplus > 0:
            cache.crop(-surplus)  # both cache classes take a count to drop, not a length

    def copy(self, cache: Any) -> Any:
        return copy.deepcopy(cache)

    def _last_logits(self, cache: Any, **inputs: torch.Tensor) -> torch.Tensor:
        out = self.model(**inputs, use_cache=True, logits_to_keep=1, **{self.cache_argument: cache})
        return out.logits[:, -1, :]  # (1, V)


class NativeBackend(_TorchBackend):
    """persona's own Llama decoder (int8 or float32): its KVCache, and batched decode steps in
    which every row keeps its own cache, length and persona (persona.model.llama_rows)."""

    def new_cache(self) -> KVCache:
        return KVCache()

    def _prompt_inputs(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """A prompt of one token goes in as its embedding: the decoder's single-token step (what
        decode calls) computes int8 products over quantized activations, while a prompt is encoded
        with exact ones, so a prompt's numbers do not depend on how it was cut into chunks."""
        if input_ids.shape[1] == 1:
            return {"inputs_embeds": self.model.get_input_embeddings()(input_ids)}  # (1, 1, D)
        return {"input_ids": input_ids}

    def _put_layer(
        self, cache: KVCache, layer: int, keys: torch.Tensor, values: torch.Tensor
    ) -> None:
        cache.update(layer, keys, values, 0)

    def decode(self, tokens: Sequence[int], caches: Sequence[Any]) -> torch.Tensor:
        if len(caches) == 1:
            return super().decode(tokens, caches)
        with torch.inference_mode():
            rows = torch.tensor(list(tokens), device=self.device)  # (B,)
            return decode_rows(self.model, rows, caches)  # (B, V)

    def cache_bytes(self, cache: KVCache) -> int:
        return cache.nbytes


class TransformersBackend(_TorchBackend):
    """Any transformers causal LM (other architectures, and training's model): its DynamicCache,
    one forward per row and step."""

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.cache_argument = cache_argument_name(model)

    def new_cache(self) -> Any:
        from transformers import DynamicCache  # only models transformers itself runs get here

        return DynamicCache()

    def _put_layer(self, cache: Any, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        cache.update(keys, values, layer)

    def cache_bytes(self, cache: Any) -> int:
        tensors = [  # keys and values of each layer
            tensor
            for layer in getattr(cache, "layers", [])
            for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None))
            if isinstance(tensor, torch.Tensor)
        ]
        return sum(tensor.untyped_storage().nbytes() for tensor in tensors)


def torch_backend(model: Any) -> NativeBackend | TransformersBackend:
    """The backend for a PyTorch model: persona's own decoder, or transformers' model."""
    if isinstance(model, LlamaDecoder):
        return NativeBackend(model)
    return TransformersBackend(model)
