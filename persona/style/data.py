"""The speaker's lines split as training splits them: the classifier learns from the training
part, the measure runs on the held-out part (a held-out log where one is given)."""

from __future__ import annotations

from collections.abc import Sequence

from persona.dialogue.examples import Example, build_examples, resolve_speaker
from persona.dialogue.split import DEFAULT_VALIDATION_FRACTION, split_by_conversation
from persona.dialogue.types import Dialogue
from persona.errors import DialogueError


def speaker_examples(
    dialogue: Dialogue,
    speaker: str | None,
    *,
    context_turns: int,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    seed: int = 0,
    heldout: Dialogue | None = None,
) -> tuple[list[Example], list[Example]]:
    """(training examples, held-out examples), the same split `persona train` makes."""
    examples = build_examples(dialogue, resolve_speaker(dialogue, speaker), context_turns)
    train, validation = split_by_conversation(examples, validation_fraction, seed)
    if heldout is not None:
        validation = build_examples(heldout, resolve_speaker(heldout, speaker), context_turns)
    return train, validation


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
