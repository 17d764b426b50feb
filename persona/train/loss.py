"""The prompt-tuning loss, computed only where it is needed.

The frozen decoder runs on [P ; embed(ids)], with two savings that leave the value equal to PEFT's
mean token cross-entropy:

* the soft prompt is the same in every row and comes first, so under causal attention its hidden
  states, keys and values are the same in every row too: they are computed once (a batch of one)
  and every row then runs only its own tokens on top of them, as a chat turn runs on a KV cache.
  With 20 virtual tokens in front of ~105-token examples that is about a seventh of the decoder's
  work per step, forward and backward (the gradient of the shared part is the sum over rows,
  which autograd forms where the keys and values are repeated);
* the vocabulary projection (a large share of the cost for a small model: V x D per position,
  forward and backward) is applied only to the hidden states whose next token is a reply label.

A deep prompt (`layout` given, see persona.prompt.deep) has no input rows to run: its keys and
values go straight into every layer's cache, shared by the rows in the same way.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from persona.errors import ModelError
from persona.model.calling import cache_argument_name
from persona.prompt.deep import KVLayout, prefilled_cache
from persona.prompt.inject import IGNORE_INDEX, prepend_prompt


def decoder_and_head(model: Any) -> tuple[Any, Any]:
    """(the base decoder returning hidden states, the output projection) of a causal LM."""
    decoder = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    head = model.get_output_embeddings()
    if decoder is None or head is None or decoder is model:
        raise ModelError(
            f"{type(model).__name__} does not expose a decoder and an lm_head; persona cannot train prompts for it"
        )
    return decoder, head


# positions projected onto the vocabulary at once: a (K, V) float32 block and its softmax for
# every target of a batch (8 replies: about 300 MB at V = 49152) is what an evaluation peaked on;
# in blocks, without autograd, one block's at a time
HEAD_ROWS = 256


def labelled_nll(
    model: Any,
    prompt: torch.Tensor | None,  # (N, D) or None for no soft prompt
    input_ids: torch.Tensor,  # (B, T)
    attention_mask: torch.Tensor,  # (B, T)
    labels: torch.Tensor,  # (B, T) IGNORE_INDEX where there is no target
    *,
    share_prompt: bool = True,
    layout: KVLayout | None = None,
) -> tuple[torch.Tensor, int]:
    """(sum of token NLLs over labelled positions, number of labelled positions).

    share_prompt=False runs every row on the whole [P ; ids] (the reference the shared form is tested against).
    `layout`: the prompt is a deep one (N, W) for a KV cache of this layout.
    """
    losses, wanted = labelled_losses(
        model, prompt, input_ids, attention_mask, labels, share_prompt=share_prompt, layout=layout
    )
    return losses.sum(), int(wanted.sum())


def labelled_losses(
    model: Any,
    prompt: torch.Tensor | None,  # (N, D) or None for no soft prompt
    input_ids: torch.Tensor,  # (B, T)
    attention_mask: torch.Tensor,  # (B, T)
    labels: torch.Tensor,  # (B, T) IGNORE_INDEX where there is no target
    *,
    share_prompt: bool = True,
    layout: KVLayout | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the NLL of every labelled token (K,), in row-major order; which positions they are (B, L-1)).

    `labelled_nll` sums them; the evaluation sums them per row.
    """
    decoder, head = decoder_and_head(model)
    embeds = model.get_input_embeddings()(input_ids)  # (B, T, D)
    deep = prompt is not None and layout is not None
    cache = (
        shareable_cache(decoder)
        if prompt is not None and share_prompt and input_ids.shape[0] > 1 and not deep
        else None
    )
    if prompt is not None and layout is not None:  # deep
        batch = input_ids.shape[0]
        prefix = prefilled_cache(model, prompt, layout, batch)  # N positions in every layer
        mask = torch.cat(
            [attention_mask.new_ones(batch, prompt.shape[0]), attention_mask], dim=1
        )  # (B, N+T)
        hidden = decoder(
            inputs_embeds=embeds,
            attention_mask=mask,
            use_cache=True,
            **{cache_argument_name(decoder): prefix},
        ).last_hidden_state  # (B, T, D): the rows' own positions, labels as they are
    elif prompt is not None and cache is not None:
        hidden = _hidden_after_shared_prompt(
            decoder, prompt, embeds, attention_mask, cache
        )  # (B, N+T, D)
        _, _, padded_labels = prepend_prompt(
            prompt, embeds[:, :0], None, labels
        )  # (B, N+T): the labels alone need the prompt's columns
        assert padded_labels is not None  # labels in, labels out
        labels = padded_labels
    else:
        if prompt is not None:
            embeds, padded_mask, padded_labels = prepend_prompt(
                prompt, embeds, attention_mask, labels
            )  # (B, N+T, ...)
            assert padded_mask is not None and padded_labels is not None  # given, so returned
            attention_mask, labels = padded_mask, padded_labels
        hidden = decoder(
            inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state  # (B, L, D)
    targets = labels[:, 1:]  # (B, L-1): position t predicts token t+1
    wanted = targets != IGNORE_INDEX  # (B, L-1)
    selected = hidden[:, :-1][wanted]  # (K, D) only the positions with a target
    chosen = targets[wanted]  # (K,)
    softcap = getattr(model.config, "final_logit_softcapping", None)
    losses = [
        _token_losses(
            head, selected[start : start + HEAD_ROWS], chosen[start : start + HEAD_ROWS], softcap
        )
        for start in range(0, selected.shape[0] or 1, HEAD_ROWS)  # one empty block for no targets
    ]
    return torch.cat(losses), wanted  # (K,), (B, L-1)


def _token_losses(
    head: Any, hidden: torch.Tensor, targets: torch.Tensor, softcap: float | None
) -> torch.Tensor:
    """The NLL of each target (k,) from its hidden state (k, D) through the output head."""
    logits = head(hidden).float()  # (k, V)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap  # (k, V)
    return F.cross_entropy(logits, targets, reduction="none")  # (k,)


def shareable_cache(decoder: Any) -> Any | None:
    """An empty KV cache for `decoder` whose every layer holds plain keys and values, else None.

    Only such a cache is an exact stand-in for running the prompt in every row: a batch can repeat
    it, and attending to it is what the plain pass computes. Recurrent or convolutional state
    (hybrid models), sliding or chunked windows and anything else get the plain pass.
    """
    try:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        return None
    config = getattr(decoder, "config", None)
    if config is None:
        return None
    try:
        cache = DynamicCache(config=config)
    except Exception:  # noqa: BLE001 - a config this transformers cannot lay a cache out for: the plain pass
        return None
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return None
    return cache


def _hidden_after_shared_prompt(
    decoder: Any,
    prompt: torch.Tensor,
    embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    cache: Any,
) -> torch.Tensor:
    """The decoder's last hidden states over [P ; embeds] for every row, P's computed once.

    prompt (N, D) runs as a batch of one into `cache` (empty, see shareable_cache); its keys and
    values, repeated for each row, are what the rows' own tokens (B, T, D) then attend to, at
    positions N.., padding masked as usual.
    """
    batch = embeds.shape[0]
    argument = cache_argument_name(decoder)
    prefix = decoder(
        inputs_embeds=prompt.to(dtype=embeds.dtype, device=embeds.device).unsqueeze(0),
        use_cache=True,
        **{argument: cache},
    )  # (1, N, D) the float32 prompt's rows in the weights' dtype
    cache.batch_repeat_interleave(
        batch
    )  # (1, ...) -> (B, ...) in every layer; backward sums over rows
    mask = torch.cat(
        [attention_mask.new_ones(batch, prompt.shape[0]), attention_mask], dim=1
    )  # (B, N+T)
    rows = decoder(
        inputs_embeds=embeds, attention_mask=mask, use_cache=True, **{argument: cache}
    )  # (B, T, D)
    return torch.cat(
        [prefix.last_hidden_state.expand(batch, -1, -1), rows.last_hidden_state], dim=1
    )  # (B, N+T, D)
