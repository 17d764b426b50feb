"""A deep prompt: learned keys and values in front of every layer's attention, not only at the input.

Prefix tuning (Li & Liang, 2021) and P-tuning v2 put N virtual positions into the KV cache of every
layer; the conversation then runs after them, at positions N.., as it runs after a soft prompt.
persona stores a deep prompt as one (N, W) float32 matrix in the layout of PEFT's PREFIX_TUNING
adapters (`prompt_embeddings`, W = layers x 2 x kv_heads x head_dim), so it exports as one:

    prompt (N, W) -> view (N, 2L, H_kv, d) -> permute -> (2L, H_kv, N, d):
    row 2l holds layer l's keys, row 2l+1 its values.

A deep prompt starts from the keys and values the frozen model computes for a soft prompt's start
(the description's embeddings, most often): from random values it trains worse than no prompt at
all on this model (docs/methods.md).
"""

from __future__ import annotations

from typing import Any

import torch

from persona.prompt.layout import KINDS, KVLayout

__all__ = [
    "KINDS",
    "KVLayout",
    "join_prefix",
    "prefilled_cache",
    "prefix_from_embeddings",
    "split_prefix",
]


def split_prefix(prompt: torch.Tensor, layout: KVLayout) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) of every layer, each (1, H_kv, N, d), views of `prompt` (N, W)."""
    count = prompt.shape[0]
    rows = prompt.view(count, 2 * layout.layers, layout.kv_heads, layout.head_dim)  # (N, 2L, H, d)
    rows = rows.permute(1, 2, 0, 3)  # (2L, H, N, d)
    return [
        (rows[2 * layer].unsqueeze(0), rows[2 * layer + 1].unsqueeze(0))  # (1, H, N, d) each
        for layer in range(layout.layers)
    ]


def join_prefix(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The (N, W) matrix of per-layer (keys, values), each (1, H_kv, N, d): split_prefix undone."""
    rows = torch.stack([t[0] for pair in pairs for t in pair])  # (2L, H, N, d)
    return rows.permute(2, 0, 1, 3).reshape(rows.shape[2], -1).contiguous()  # (N, W)


def prefix_from_embeddings(model: Any, embeddings: torch.Tensor) -> torch.Tensor:
    """The deep prompt (N, W) holding what `model` computes at every layer for the input rows
    `embeddings` (N, D): where a deep prompt starts training."""
    from transformers import DynamicCache

    from persona.model.calling import cache_argument_name

    decoder = getattr(model, getattr(model, "base_model_prefix", "model"), model)
    cache = DynamicCache(config=model.config)
    weight = model.get_input_embeddings().weight
    with torch.no_grad():
        decoder(
            inputs_embeds=embeddings.to(dtype=weight.dtype, device=weight.device).unsqueeze(0),
            use_cache=True,
            **{cache_argument_name(decoder): cache},
        )  # (1, N, D) in; every layer's keys and values into the cache
    pairs = [(_tensor(layer, "keys"), _tensor(layer, "values")) for layer in cache.layers]
    return join_prefix(pairs).to(torch.float32)  # (N, W)


def prefilled_cache(model: Any, prompt: torch.Tensor, layout: KVLayout, batch: int) -> Any:
    """A transformers DynamicCache holding the deep prompt for `batch` rows (gradients flow into
    `prompt`: the rows share its keys and values)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    weight = model.get_input_embeddings().weight
    prompt = prompt.to(dtype=weight.dtype, device=weight.device)  # (N, W)
    for layer, (keys, values) in enumerate(split_prefix(prompt, layout)):
        cache.update(
            keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1), layer
        )  # (B, H, N, d) each
    return cache


def _tensor(layer: object, name: str) -> torch.Tensor:
    """A plain cache layer's keys or values, (1, H, N, d); a layer without them (linear attention)
    cannot hold a deep prompt, which the caller checked already."""
    tensor = getattr(layer, name, None)
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"this model's cache layer {type(layer).__name__} holds no {name}")
    return tensor
