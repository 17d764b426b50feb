"""Blend prompts of one model into a new one.

interpolate: P = sum_i w_i P_i over prompts of one shape (N, D); weights positive, summing to 1.
concat:      P = [P_1 ; P_2 ; ...], shape (N_1 + N_2 + ..., D): every source's virtual tokens, in
             the order given, so the model attends to each of them as they were trained.

Deep prompts (N, W) blend the same way: each row is one virtual position's keys and values at
every layer (persona.prompt.deep), so a mean of rows is a mean of keys and values, and stacked rows
are the sources' caches one after the other. Their keys keep the rotary positions they were made
at, though: after a concat the conversation meets each source further away than it was trained at
(by the other sources' lengths). A soft and a deep prompt, or deep prompts of two layouts, never mix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from persona.errors import ConfigError, PromptMismatchError
from persona.prompt.softprompt import SoftPrompt

METHODS = ("interpolate", "concat")
INIT = "blend"  # the `init` a blended prompt records


@dataclass
class Blend:
    prompt: SoftPrompt
    weights: list[float | None]  # per source, as applied (normalised); None for concat


def normalised_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """One weight per prompt, positive and summing to 1; equal weights when none are given."""
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise ConfigError(
            f"--weights gives {len(weights)} weight(s) for {count} personas; give one per persona"
        )
    for weight in weights:
        if not (math.isfinite(weight) and weight > 0):
            raise ConfigError(f"--weights must be positive numbers, got {weight!r}")
    total = sum(weights)
    return [weight / total for weight in weights]


def interpolate(embeddings: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """The weighted sum of same-shaped (N, D) or (N, W) matrices, accumulated in float64."""
    stacked = torch.stack(list(embeddings)).to(torch.float64)  # (K, N, D)
    scale = torch.tensor(list(weights), dtype=torch.float64).view(-1, 1, 1)  # (K, 1, 1)
    return (stacked * scale).sum(dim=0).to(torch.float32)  # (N, D)


def concat(embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
    """The rows of every (N_i, D) or (N_i, W) matrix, one matrix after the other."""
    return torch.cat(list(embeddings), dim=0)  # (N_1 + N_2 + ..., D)


def default_description(names: Sequence[str]) -> str:
    """'A blend of falstaff and juliet' (or 'of a, b and c')."""
    listed = ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]
    return f"A blend of {listed}"


def blend_prompts(
    prompts: Sequence[SoftPrompt],
    *,
    method: str,
    name: str,
    description: str,
    max_virtual_tokens: int,
    weights: Sequence[float] | None = None,
) -> Blend:
    """A new prompt `name` made from `prompts` (two or more, all for one model) by `method`.

    weights: interpolate only; normalised to sum 1, equal when None. The written system message a
    source was trained under (SoftPrompt.system) is kept from the first source that has one; no
    other metadata of the sources (their `extra`, such as carried defaults) is.
    """
    if method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if len(prompts) < 2:
        raise ConfigError(f"a blend needs at least two personas, got {len(prompts)}")
    if method == "concat" and weights is not None:
        raise ConfigError(
            "--weights apply to --method interpolate only: concat keeps every row of every persona as it is"
        )
    first = prompts[0]
    for prompt in prompts:
        prompt.check_consistent()
        if prompt.fingerprint != first.fingerprint or prompt.hidden_size != first.hidden_size:
            raise PromptMismatchError(
                f"persona {prompt.name!r} was trained for model {prompt.fingerprint or 'unknown'} "
                f"(width {prompt.hidden_size}), {first.name!r} for {first.fingerprint or 'unknown'} "
                f"(width {first.hidden_size}); blend only personas of one model"
            )
        _check_same_kind(prompt, first)
    if method == "interpolate":
        for prompt in prompts:
            if prompt.num_virtual_tokens != first.num_virtual_tokens:
                raise ConfigError(
                    f"--method interpolate needs prompts of one length: {first.name!r} has "
                    f"{first.num_virtual_tokens} virtual tokens, {prompt.name!r} "
                    f"{prompt.num_virtual_tokens}; use --method concat to put them one after the other"
                )
    length = (
        first.num_virtual_tokens
        if method == "interpolate"
        else sum(prompt.num_virtual_tokens for prompt in prompts)
    )
    if length > max_virtual_tokens:
        raise ConfigError(
            f"the blend would have {length} virtual tokens, more than the {max_virtual_tokens} a "
            "persona may have; blend fewer or shorter personas"
        )
    applied: list[float | None]
    if method == "interpolate":
        normalised = normalised_weights(weights, len(prompts))
        applied = [*normalised]
        embeddings = interpolate([p.embeddings for p in prompts], normalised)  # (N, D) or (N, W)
    else:
        applied = [None] * len(prompts)
        embeddings = concat([p.embeddings for p in prompts])  # (N_1 + N_2 + ..., D) or (.., W)
    prompt = SoftPrompt(
        embeddings=embeddings,
        name=name,
        description=description,
        fingerprint=first.fingerprint,
        init=INIT,
        base_model=first.base_model,
        system=next((p.system for p in prompts if p.system), ""),
        kind=first.kind,
        layout=first.layout,
    )
    return Blend(prompt, applied)


def _check_same_kind(prompt: SoftPrompt, first: SoftPrompt) -> None:
    """Refuse, in one line, a soft prompt blended with a deep one, or deep prompts of two layouts:
    their rows are not the same kind of thing."""
    if prompt.kind != first.kind:
        raise PromptMismatchError(
            f"persona {prompt.name!r} is a {prompt.kind} prompt and {first.name!r} a {first.kind} one: "
            "a soft prompt's rows are input embeddings, a deep one's keys and values at every layer; "
            "blend only personas of one kind"
        )
    if prompt.layout != first.layout:
        raise PromptMismatchError(
            f"deep persona {prompt.name!r} holds keys and values for {prompt.layout} (layers x kv heads "
            f"x head dim), {first.name!r} for {first.layout}; blend only personas of one model"
        )


def blend_record(
    method: str, sources: Sequence[tuple[str, int, SoftPrompt]], weights: Sequence[float | None]
) -> dict[str, Any]:
    """The training record of a blend: its method, and each source's name, version, sha256 and
    weight (None for concat) and length in virtual tokens, in the order blended."""
    return {
        "blend": {
            "method": method,
            "sources": [
                {
                    "name": name,
                    "version": version,
                    "sha256": prompt.sha256,
                    "weight": weight,
                    "virtual_tokens": prompt.num_virtual_tokens,
                }
                for (name, version, prompt), weight in zip(sources, weights, strict=True)
            ],
        }
    }
