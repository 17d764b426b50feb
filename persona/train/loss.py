"""The prompt-tuning loss, computed only where it is needed.

The frozen decoder runs on [P ; embed(ids)]; the vocabulary projection (a large share of the
cost for a small model: V x D per position, forward and backward) is applied only to the hidden
states whose next token is a reply label. The value equals PEFT's mean token cross-entropy.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from persona.errors import ModelError
from persona.prompt.inject import IGNORE_INDEX, prepend_prompt


def decoder_and_head(model: Any) -> tuple[Any, Any]:
    """(the base decoder returning hidden states, the output projection) of a causal LM."""
    decoder = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    head = model.get_output_embeddings()
    if decoder is None or head is None or decoder is model:
        raise ModelError(f"{type(model).__name__} does not expose a decoder and an lm_head; persona cannot train prompts for it")
    return decoder, head


def labelled_nll(
    model: Any,
    prompt: torch.Tensor | None,  # (N, D) or None for no soft prompt
    input_ids: torch.Tensor,  # (B, T)
    attention_mask: torch.Tensor,  # (B, T)
    labels: torch.Tensor,  # (B, T) IGNORE_INDEX where there is no target
) -> tuple[torch.Tensor, int]:
    """(sum of token NLLs over labelled positions, number of labelled positions)."""
    decoder, head = decoder_and_head(model)
    embeds = model.get_input_embeddings()(input_ids)  # (B, T, D)
    if prompt is not None:
        embeds, attention_mask, labels = prepend_prompt(prompt, embeds, attention_mask, labels)  # (B, N+T, ...)
    hidden = decoder(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False).last_hidden_state  # (B, L, D)
    targets = labels[:, 1:]  # (B, L-1): position t predicts token t+1
    wanted = targets != IGNORE_INDEX  # (B, L-1)
    selected = hidden[:, :-1][wanted]  # (K, D) only the positions with a target
    logits = head(selected).float()  # (K, V)
    softcap = getattr(model.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap  # (K, V)
    total = F.cross_entropy(logits, targets[wanted], reduction="sum")  # ()
    return total, int(wanted.sum())
