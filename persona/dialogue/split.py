"""Seeded train/validation split by conversation, so held-out replies come from unseen conversations."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from persona.dialogue.examples import Example, build_examples, resolve_speaker
from persona.dialogue.types import Dialogue
from persona.errors import ConfigError

DEFAULT_VALIDATION_FRACTION = 0.1


def split_by_conversation(
    examples: list[Example], fraction: float = DEFAULT_VALIDATION_FRACTION, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """(train, validation): whole conversations go to validation until it holds ~`fraction` of the examples.

    A log that is a single conversation cannot be split by conversation; its last `fraction`
    of examples are held out instead (they come after every training reply).
    """
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"--validation-fraction must be in [0, 1), got {fraction!r}")
    if fraction == 0.0 or len(examples) < 2:
        return list(examples), []
    wanted = max(1, round(fraction * len(examples)))
    conversations = sorted({example.conversation for example in examples})
    if len(conversations) == 1:
        return list(examples[:-wanted]), list(examples[-wanted:])
    random.Random(seed).shuffle(conversations)
    sizes = {conv: 0 for conv in conversations}
    for example in examples:
        sizes[example.conversation] += 1
    held: set[int] = set()
    count = 0
    for conv in conversations[:-1]:  # the last one always stays in training
        if count >= wanted:
            break
        held.add(conv)
        count += sizes[conv]
    train = [e for e in examples if e.conversation not in held]
    validation = [e for e in examples if e.conversation in held]
    return train, validation


@dataclass(frozen=True)
class SpeakerSplit:
    """One speaker's replies split as `persona train` splits them."""

    speaker: str  # as written in the log
    train: list[Example]  # what the prompt learns from
    validation: list[Example]  # the conversations held out of `train` (the validation loss)
    heldout: list[
        Example
    ]  # what the persona is judged on: a held-out log's replies, else validation


def split_speaker(
    dialogue: Dialogue,
    speaker: str | None,
    *,
    context_turns: int,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    seed: int = 0,
    heldout: Dialogue | None = None,
) -> SpeakerSplit:
    """`speaker`'s replies in `dialogue`, split by conversation; judged on `heldout`'s replies by
    the same speaker where a held-out log is given. Training, its evaluation and the style measure
    all split through here, so they agree on which replies were never trained on."""
    name = resolve_speaker(dialogue, speaker)
    examples = build_examples(dialogue, name, context_turns)
    train, validation = split_by_conversation(examples, validation_fraction, seed)
    judged = (
        build_examples(heldout, resolve_speaker(heldout, speaker), context_turns)
        if heldout is not None
        else validation
    )
    return SpeakerSplit(name, train, validation, judged)


def seeded_sample(items: Sequence[Example], size: int | None, seed: int) -> list[Example]:
    """A seeded random sample of `size` examples in their original order; all of them for None."""
    if size is None or size >= len(items):
        return list(items)
    chosen = sorted(random.Random(seed).sample(range(len(items)), size))
    return [items[i] for i in chosen]
