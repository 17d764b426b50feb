"""The speaker's lines for the style measure: the classifier learns from the training part of
`persona.dialogue.split.split_speaker`, the measure runs on its held-out part; a log measured on
its own is split in halves."""

from __future__ import annotations

from collections.abc import Sequence

from persona.dialogue.examples import Example
from persona.dialogue.split import split_by_conversation
from persona.errors import DialogueError


def with_context(examples: Sequence[Example], what: str) -> list[Example]:
    """The examples that answer an earlier turn (an opening line has nothing to reply to)."""
    chosen = [example for example in examples if example.context]
    if not chosen:
        raise DialogueError(f"no {what} line answers an earlier turn; use a longer log")
    return chosen


def split_in_halves(
    examples: Sequence[Example], seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """(lines the classifier learns from, lines the measure runs on): half the conversations each,
    for a log that is measured on its own (`persona eval`), with no training split to lean on."""
    train, heldout = split_by_conversation(list(examples), 0.5, seed)
    if not train or not heldout:
        raise DialogueError("the log is too short to measure style: it needs two conversations")
    return train, heldout
