"""A persona as keys and values: what its N positions put into every layer's cache, (N, W).

A deep persona is that already. A soft one (N, D input rows) becomes it by one forward pass of
its rows alone: under causal attention the prompt's positions never see the conversation, so
their keys and values are a pure function of the prompt, computed once and put in front of any
conversation (an engine that takes keys and values from outside, such as vLLM through persona's
KV connector, then runs every persona the same way). The layout is PEFT's PREFIX_TUNING one
(persona.prompt.deep), so the matrix is a deep prompt equal to the soft one.
"""

from __future__ import annotations

from typing import Any

import torch

from persona.engine.torch_backend import NativeBackend, TransformersBackend
from persona.errors import PromptMismatchError
from persona.prompt.deep import join_prefix
from persona.prompt.softprompt import SoftPrompt


def persona_kv(backend: NativeBackend | TransformersBackend, persona: SoftPrompt) -> torch.Tensor:
    """The (N, W) float32 keys and values of `persona` on `backend`'s model."""
    if persona.kind == "deep":
        return persona.embeddings  # (N, W)
    if backend.layout is None:
        raise PromptMismatchError(
            f"persona {persona.name!r}: this model names no plain KV cache layout, so its soft "
            "prompt cannot be turned into keys and values"
        )
    rows = persona.embeddings.to(dtype=backend.activation_dtype(), device=backend.device)  # (N, D)
    if isinstance(backend, NativeBackend):
        native = backend.new_cache()
        _run(backend, rows, native)
        pairs = [native.layer(index) for index in range(backend.layout.layers)]
    else:
        cache: Any = backend.new_cache()  # transformers' DynamicCache
        _run(backend, rows, cache)
        pairs = [(layer.keys, layer.values) for layer in cache.layers]
    return join_prefix(pairs).to(torch.float32).cpu()  # (N, W)


def _run(backend: NativeBackend | TransformersBackend, rows: torch.Tensor, cache: Any) -> None:
    """The prompt's rows (N, D) alone through the model, every layer's keys and values into `cache`."""
    with torch.inference_mode():
        backend.model(
            inputs_embeds=rows.unsqueeze(0),  # (1, N, D)
            use_cache=True,
            logits_to_keep=1,
            **{backend.cache_argument: cache},
        )
