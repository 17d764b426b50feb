"""Reference implementations the engine is checked against: no cache, whole sequence every step."""

from __future__ import annotations

import torch

from persona.prompt.inject import prepend_prompt


def greedy_uncached(
    model, ids: list[int], prompt: torch.Tensor | None, max_new_tokens: int, stop_ids: set[int]
) -> list[int]:
    """Greedy decoding that re-runs [P ; ids + generated] from scratch for every token."""
    generated: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            input_ids = torch.tensor([ids + generated])  # (1, T)
            embeds = model.get_input_embeddings()(input_ids)  # (1, T, D)
            if prompt is not None:
                embeds, _, _ = prepend_prompt(prompt, embeds)  # (1, N+T, D)
            logits = model(inputs_embeds=embeds, use_cache=False).logits[:, -1, :]  # (1, V)
            token = int(logits.argmax(dim=-1))
            if token in stop_ids:
                break
            generated.append(token)
    return generated
