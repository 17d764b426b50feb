"""Held-out negative log-likelihood per reply token: no prompt, the written description, the persona.

All three score exactly the same reply tokens (replies are cut the same way whatever precedes
them), so the numbers compare directly: lower is better, and a persona's prompt (deep or soft)
earns its place only if it beats both the bare model and simply writing the description as a
system prompt.
Only replies to something are scored: a line that opens a conversation has no context, and a
chat template cannot render an empty conversation for the bare model (nor does a chat ever
start with the persona speaking).

A long log is not scored whole: a seeded sample of its replies (DEFAULT_EVAL_SAMPLE), the same
replies under every condition, gives the NLL with a 95% interval. The NLL per token is a ratio
(NLL summed over the sampled replies / their tokens), so its interval is the ratio estimator's
delta-method (linearised) standard error over replies: deterministic, needs no resampling, and
applies alike to the paired differences soft - none and soft - written, which are usually tighter
than the separate intervals because the same replies are hard or easy under every condition.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import torch
from tqdm import tqdm

from persona.dialogue.encode import EncodedExample, encode_examples
from persona.dialogue.examples import Example
from persona.dialogue.split import seeded_sample
from persona.errors import ConfigError, DialogueError
from persona.model.device import model_device
from persona.prompt.deep import KVLayout
from persona.prompt.render import Renderer
from persona.style.generate import NO_PROMPT, PERSONA, WRITTEN_PROMPT
from persona.train.batching import collate
from persona.train.loss import labelled_losses, labelled_nll
from persona.train.ranks import Ranks

DEFAULT_EVAL_SAMPLE = 200  # held-out replies scored per condition; None scores them all
CONFIDENCE = 0.95  # of the intervals in the result
CONDITIONS = {  # result key (the style report's names) -> what it is, as the progress bar names it
    NO_PROMPT: "no prompt",
    WRITTEN_PROMPT: "written description",
    PERSONA: "persona",
}
PERSONA_MINUS_NO_PROMPT = f"{PERSONA}_minus_{NO_PROMPT}"
PERSONA_MINUS_WRITTEN = f"{PERSONA}_minus_{WRITTEN_PROMPT}"


def mean_nll(
    model: Any,
    prompt: torch.Tensor | None,  # (N, D) or None
    encoded: Sequence[EncodedExample],
    *,
    pad_id: int,
    batch_size: int = 8,
    ranks: Ranks | None = None,
    layout: KVLayout | None = None,
) -> tuple[float, int]:
    """(NLL per labelled token, number of labelled tokens), in length-sorted batches, no gradients.

    Batches go to the model's device; the sums come back to the host once, at the end. Under a
    data-parallel launch each rank scores its share of the batches and the sums are added up.
    """
    ranks = ranks or Ranks()
    device = model_device(model)
    totals: list[torch.Tensor] = []  # () per batch, left on the device
    count = 0
    with torch.inference_mode():
        for batch in ranks.share(_batches(encoded, batch_size)):
            ids, mask, labels = (
                tensor.to(device) for tensor in collate([encoded[i] for i in batch], pad_id)
            )  # (B, T) each
            batch_total, batch_count = labelled_nll(model, prompt, ids, mask, labels, layout=layout)
            totals.append(batch_total)
            count += batch_count
    total = sum(torch.stack(totals).tolist()) if totals else 0.0  # summed on the host, in double
    if ranks.distributed:
        sums = ranks.sum(
            torch.tensor([total, float(count)], dtype=torch.float64, device=ranks.device)
        )  # (2,)
        total, count = sums[0].item(), int(sums[1].item())
    return (total / count if count else float("nan")), count


def example_nll(
    model: Any,
    prompt: torch.Tensor | None,  # (N, D) or None
    encoded: Sequence[EncodedExample],
    *,
    pad_id: int,
    batch_size: int = 8,
    ranks: Ranks | None = None,
    bar: tqdm | None = None,
    layout: KVLayout | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(NLL summed over each example's labelled tokens (E,) float64, their number (E,) int64), on the host.

    Scored as `mean_nll` scores (same batches, same shared prompt), so the totals are its totals.
    Under a data-parallel launch each rank scores its share and every rank gets all E. `bar`
    advances one step per batch this rank scores.
    """
    ranks = ranks or Ranks()
    device = model_device(model)
    scored: list[list[int]] = []
    sums: list[torch.Tensor] = []  # (B,) per batch, left on the device
    counts: list[torch.Tensor] = []  # (B,) per batch
    with torch.inference_mode():
        for batch in ranks.share(_batches(encoded, batch_size)):
            ids, mask, labels = (
                tensor.to(device) for tensor in collate([encoded[i] for i in batch], pad_id)
            )  # (B, T) each
            batch_sums, batch_counts = _row_nll(
                model, prompt, ids, mask, labels, layout
            )  # (B,) each
            scored.append(batch)
            sums.append(batch_sums)
            counts.append(batch_counts)
            if bar is not None:
                bar.update(1)
    per_example = torch.zeros(2, len(encoded), dtype=torch.float64)  # (2, E): sums, counts
    if scored:
        where = torch.tensor([i for batch in scored for i in batch])  # (K,)
        per_example[0, where] = torch.cat(sums).double().cpu()  # (K,)
        per_example[1, where] = torch.cat(counts).double().cpu()  # (K,)
    if ranks.distributed:
        per_example = ranks.sum(per_example.to(ranks.device)).cpu()  # (2, E) each rank's rows
    return per_example[0], per_example[1].round().long()


def scorable(examples: Sequence[Example]) -> list[Example]:
    """The examples that reply to at least one earlier turn."""
    return [example for example in examples if example.context]


@dataclass
class EvaluationSet:
    """The held-out examples rendered the three ways, ready to score (rendering fails here, not after training)."""

    bare: list[EncodedExample]  # no system text: the model's chat template decides
    written: list[EncodedExample] | None  # the description as the system message; None without one
    with_prompt: list[EncodedExample]  # empty system message, the soft prompt in front
    examples: int  # how many are scored (the sample)
    population: int  # how many held-out examples could have been (every one that replies)


def prepare_evaluation(
    renderer: Renderer,
    examples: Sequence[Example],
    *,
    description: str | None,
    max_length: int = 512,
    max_reply_tokens: int = 160,
    sample: int | None = DEFAULT_EVAL_SAMPLE,
    seed: int = 0,
    persona_system: str | None = None,
) -> EvaluationSet:
    """Render a seeded sample of `sample` scorable examples (in their original order; None: all of them).

    `persona_system`: the system message the soft prompt was trained under (SoftPrompt.system), so
    it is scored the way it speaks; None for the empty one."""
    if sample is not None and (isinstance(sample, bool) or sample < 1):
        raise ConfigError(f"sample={sample!r} must be at least 1, or None for all")
    population = scorable(examples)
    if not population:
        raise DialogueError(
            "no held-out line answers an earlier turn, so there is nothing to score; use a longer log"
        )
    chosen = seeded_sample(population, sample, seed)

    def encode(persona: str | None, system: str | None = None) -> list[EncodedExample]:
        return encode_examples(
            renderer,
            chosen,
            persona,
            system=system,
            max_length=max_length,
            max_reply_tokens=max_reply_tokens,
        )

    written = None
    if description and description.strip():
        written = encode(None, system=description.strip())
    return EvaluationSet(
        bare=encode(None),
        written=written,
        with_prompt=encode("persona", system=persona_system),
        examples=len(chosen),
        population=len(population),
    )


def score(
    model: Any,
    prompt: torch.Tensor,  # (N, D), or (N, W) for a deep prompt of `layout`
    held_out: EvaluationSet,
    *,
    pad_id: int,
    batch_size: int = 8,
    ranks: Ranks | None = None,
    progress: bool = False,
    layout: KVLayout | None = None,
) -> dict[str, Any]:
    """The held-out NLL per reply token under each condition, with 95% intervals.

    `{"nll": {"no_prompt", "written_prompt", "persona"}, "interval": {the same: [low, high]},
    "difference": {"persona_minus_no_prompt", "persona_minus_written_prompt": [mean, low, high]},
    "tokens", "examples" (scored), "population" (scorable)}`; without a description
    "written_prompt" and "persona_minus_written_prompt" are None, and with one example every
    interval is None.
    `progress` shows one bar over every batch of every condition on stderr (rank 0's only).
    """
    ranks = ranks or Ranks()
    # condition -> (the prompt in front, or None; its examples), in the order they are reported
    runs: dict[str, tuple[torch.Tensor | None, list[EncodedExample]]] = {
        NO_PROMPT: (None, held_out.bare)
    }
    if held_out.written is not None:
        runs[WRITTEN_PROMPT] = (None, held_out.written)
    runs[PERSONA] = (prompt, held_out.with_prompt)
    total = sum(len(ranks.share(_batches(encoded, batch_size))) for _, encoded in runs.values())
    per_example: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # key -> (E,), (E,)
    with tqdm(
        total=total,
        desc="evaluating",
        unit="batch",
        file=sys.stderr,
        disable=not (progress and ranks.is_main),
    ) as bar:
        for key, (condition_prompt, encoded) in runs.items():
            bar.set_description(f"evaluating: {CONDITIONS[key]}")
            per_example[key] = example_nll(
                model,
                condition_prompt,
                encoded,
                pad_id=pad_id,
                batch_size=batch_size,
                ranks=ranks,
                bar=bar,
                layout=layout if key == PERSONA else None,
            )
    nll: dict[str, float | None] = dict.fromkeys(CONDITIONS)
    interval: dict[str, list[float] | None] = dict.fromkeys(CONDITIONS)
    for key, (sums, counts) in per_example.items():
        estimate, influence = _ratio(sums, counts)
        nll[key], interval[key] = estimate.item(), _interval(estimate, influence)
    written = per_example.get(WRITTEN_PROMPT)
    persona = per_example[PERSONA]
    return {
        "nll": nll,
        "interval": interval,
        "difference": {
            PERSONA_MINUS_NO_PROMPT: _difference(persona, per_example[NO_PROMPT]),
            PERSONA_MINUS_WRITTEN: None if written is None else _difference(persona, written),
        },
        "tokens": int(per_example[NO_PROMPT][1].sum()),
        "examples": held_out.examples,
        "population": held_out.population,
    }


def evaluate(
    model: Any,
    renderer: Renderer,
    examples: Sequence[Example],
    prompt: torch.Tensor,  # (N, D), or (N, W) for a deep prompt of `layout`
    *,
    description: str | None,
    pad_id: int,
    batch_size: int = 8,
    max_length: int = 512,
    max_reply_tokens: int = 160,
    sample: int | None = DEFAULT_EVAL_SAMPLE,
    seed: int = 0,
    progress: bool = False,
    persona_system: str | None = None,
    layout: KVLayout | None = None,
) -> dict[str, Any]:
    """Render and score in one go (see `prepare_evaluation` for the sample, `score` for the result)."""
    held_out = prepare_evaluation(
        renderer,
        examples,
        description=description,
        max_length=max_length,
        max_reply_tokens=max_reply_tokens,
        sample=sample,
        seed=seed,
        persona_system=persona_system,
    )
    return score(
        model,
        prompt,
        held_out,
        pad_id=pad_id,
        batch_size=batch_size,
        progress=progress,
        layout=layout,
    )


def _batches(encoded: Sequence[EncodedExample], batch_size: int) -> list[list[int]]:
    """Indices into `encoded` in batches of similar length (shortest first), to pad little."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def _row_nll(
    model: Any,
    prompt: torch.Tensor | None,  # (N, D) or None
    input_ids: torch.Tensor,  # (B, T)
    attention_mask: torch.Tensor,  # (B, T)
    labels: torch.Tensor,  # (B, T) IGNORE_INDEX where there is no target
    layout: KVLayout | None = None,  # the prompt is a deep one
) -> tuple[torch.Tensor, torch.Tensor]:
    """`labelled_nll` kept apart by row: (NLL summed over each row's labelled positions (B,), their number (B,))."""
    losses, wanted = labelled_losses(
        model, prompt, input_ids, attention_mask, labels, layout=layout
    )  # (K,)
    rows = wanted.nonzero()[:, 0]  # (K,) the row of each target, in the order `losses` has them
    sums = losses.new_zeros(input_ids.shape[0]).index_add_(0, rows, losses)  # (B,)
    return sums, wanted.sum(dim=1)  # (B,), (B,)


def _ratio(sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ sums / Σ counts, each example's linearised influence on it (E,)): the ratio estimator."""
    estimate = sums.sum() / counts.sum()  # ()
    return estimate, (sums - estimate * counts) / counts.double().mean()  # (), (E,)


def _interval(estimate: torch.Tensor, influence: torch.Tensor) -> list[float] | None:
    """[low, high]: `estimate` -+ z standard errors, the error from the examples' influence (E,)."""
    examples = influence.numel()
    if examples < 2:
        return None
    standard_error = math.sqrt(influence.square().sum().item() / (examples * (examples - 1)))
    half = NormalDist().inv_cdf((1 + CONFIDENCE) / 2) * standard_error
    return [estimate.item() - half, estimate.item() + half]


def _difference(
    first: tuple[torch.Tensor, torch.Tensor], second: tuple[torch.Tensor, torch.Tensor]
) -> list[float] | None:
    """[mean, low, high] of NLL(first) - NLL(second) over the same examples, a paired interval."""
    first_estimate, first_influence = _ratio(*first)
    second_estimate, second_influence = _ratio(*second)
    estimate = first_estimate - second_estimate  # ()
    bounds = _interval(estimate, first_influence - second_influence)
    return None if bounds is None else [estimate.item(), *bounds]
