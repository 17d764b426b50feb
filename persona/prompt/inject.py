"""Prepend a soft prompt to a batch, exactly as PEFT's PROMPT_TUNING does.

inputs_embeds = cat([P, embed(ids)]), attention mask extended with N ones, labels padded with
N x -100. Keeping this convention means a prompt trained here is a valid PEFT adapter and back.
"""

from __future__ import annotations

import torch

from persona.prompt.labels import IGNORE_INDEX

__all__ = ["IGNORE_INDEX", "prepend_prompt"]


def prepend_prompt(
    prompt: torch.Tensor,  # (N, D) one prompt for every row, or (B, N, D) one per row
    inputs_embeds: torch.Tensor,  # (B, T, D)
    attention_mask: torch.Tensor | None = None,  # (B, T)
    labels: torch.Tensor | None = None,  # (B, T)
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    batch = inputs_embeds.shape[0]
    if prompt.dim() == 2:
        prompt = prompt.unsqueeze(0).expand(batch, -1, -1)  # (B, N, D)
    prompt = prompt.to(dtype=inputs_embeds.dtype, device=inputs_embeds.device)
    num_virtual = prompt.shape[1]
    embeds = torch.cat([prompt, inputs_embeds], dim=1)  # (B, N+T, D)
    if attention_mask is not None:
        ones = attention_mask.new_ones(batch, num_virtual)  # (B, N)
        attention_mask = torch.cat([ones, attention_mask], dim=1)  # (B, N+T)
    if labels is not None:
        pad = labels.new_full((batch, num_virtual), IGNORE_INDEX)  # (B, N)
        labels = torch.cat([pad, labels], dim=1)  # (B, N+T)
    return embeds, attention_mask, labels
