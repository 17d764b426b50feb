"""Held-out negative log-likelihood per reply token: no prompt, the written description, the soft prompt.

All three score exactly the same reply tokens (replies are cut the same way whatever precedes
them), so the numbers compare directly: lower is better, and a soft prompt earns its place only
if it beats both the bare model and simply writing the description as a system prompt.
Only replies to something are scored: a line that opens a conversation has no context, and a
chat template cannot render an empty conversation for the bare model (nor does a chat ever
start with the persona speaking).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from persona.dialogue.encode import EncodedExample, encode_examples
from persona.dialogue.examples import Example
from persona.errors import DialogueError
from persona.model.device import model_device
from persona.prompt.render import Renderer
from persona.train.batching import collate
from persona.train.loss import labelled_nll
from persona.train.ranks import Ranks


def mean_nll(
    model: Any,
    prompt: torch.Tensor | None,  # (N, D) or None
    encoded: Sequence[EncodedExample],
    *,
    pad_id: int,
    batch_size: int = 8,
    ranks: Ranks | None = None,
) -> tuple[float, int]:
    """(NLL per labelled token, number of labelled tokens), in length-sorted batches, no gradients.

    Batches go to the model's device; the sums come back to the host once, at the end. Under a
    data-parallel launch each rank scores its share of the batches and the sums are added up.
    """
    ranks = ranks or Ranks()
    device = model_device(model)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    totals: list[torch.Tensor] = []  # () per batch, left on the device
    count = 0
    with torch.inference_mode():
        for batch in ranks.share(batches):
            ids, mask, labels = (
                tensor.to(device) for tensor in collate([encoded[i] for i in batch], pad_id)
            )  # (B, T) each
            batch_total, batch_count = labelled_nll(model, prompt, ids, mask, labels)
            totals.append(batch_total)
            count += batch_count
    total = sum(torch.stack(totals).tolist()) if totals else 0.0  # summed on the host, in double
    if ranks.distributed:
        sums = ranks.sum(
            torch.tensor([total, float(count)], dtype=torch.float64, device=ranks.device)
        )  # (2,)
        total, count = sums[0].item(), int(sums[1].item())
    return (total / count if count else float("nan")), count


def scorable(examples: Sequence[Example]) -> list[Example]:
    """The examples that reply to at least one earlier turn."""
    return [example for example in examples if example.context]


@dataclass
class EvaluationSet:
    """The held-out examples rendered the three ways, ready to score (rendering fails here, not after training)."""

    bare: list[EncodedExample]  # no system text: the model's chat template decides
    written: list[EncodedExample] | None  # the description as the system message; None without one
    with_prompt: list[EncodedExample]  # empty system message, the soft prompt in front
    examples: int


def prepare_evaluation(
    renderer: Renderer,
    examples: Sequence[Example],
    *,
    description: str | None,
    max_length: int = 512,
    max_reply_tokens: int = 160,
) -> EvaluationSet:
    chosen = scorable(examples)
    if not chosen:
        raise DialogueError(
            "no held-out line answers an earlier turn, so there is nothing to score; use a longer log"
        )
    limits = {"max_length": max_length, "max_reply_tokens": max_reply_tokens}
    written = None
    if description and description.strip():
        written = encode_examples(renderer, chosen, None, system=description.strip(), **limits)
    return EvaluationSet(
        bare=encode_examples(renderer, chosen, None, **limits),
        written=written,
        with_prompt=encode_examples(renderer, chosen, "persona", **limits),
        examples=len(chosen),
    )


def score(
    model: Any,
    prompt: torch.Tensor,
    held_out: EvaluationSet,
    *,
    pad_id: int,
    batch_size: int = 8,
    ranks: Ranks | None = None,
) -> dict[str, Any]:
    """`{"nll": {"no_prompt", "hard_prompt" (None without a description), "soft_prompt"}, "tokens", "examples"}`."""
    settings = {"pad_id": pad_id, "batch_size": batch_size, "ranks": ranks}
    no_prompt, tokens = mean_nll(model, None, held_out.bare, **settings)
    soft_prompt, _ = mean_nll(model, prompt, held_out.with_prompt, **settings)
    hard_prompt = None
    if held_out.written is not None:
        hard_prompt, _ = mean_nll(model, None, held_out.written, **settings)
    return {
        "nll": {"no_prompt": no_prompt, "hard_prompt": hard_prompt, "soft_prompt": soft_prompt},
        "tokens": tokens,
        "examples": held_out.examples,
    }


def evaluate(
    model: Any,
    renderer: Renderer,
    examples: Sequence[Example],
    prompt: torch.Tensor,  # (N, D)
    *,
    description: str | None,
    pad_id: int,
    batch_size: int = 8,
    max_length: int = 512,
    max_reply_tokens: int = 160,
) -> dict[str, Any]:
    """Render and score in one go (see `score` for the result)."""
    held_out = prepare_evaluation(
        renderer,
        examples,
        description=description,
        max_length=max_length,
        max_reply_tokens=max_reply_tokens,
    )
    return score(model, prompt, held_out, pad_id=pad_id, batch_size=batch_size)
