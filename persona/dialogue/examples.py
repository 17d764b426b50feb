"""Conversations -> training examples: each line of the chosen speaker is a reply to what came before.

The persona's own earlier lines are `assistant` turns; everyone else speaks in the `user` role.
When a conversation has several other speakers, their lines keep a `NAME: ` prefix so the
persona can tell who said what; consecutive lines in the same role are merged into one message
(many chat templates require roles to alternate).
"""

from __future__ import annotations

from dataclasses import dataclass

from persona.dialogue.types import Conversation, Dialogue, Turn, normalise_speaker
from persona.errors import ConfigError, DialogueError
from persona.prompt.render import Message

DEFAULT_CONTEXT_TURNS = 4
SPEAKERS_LISTED = 12


@dataclass(frozen=True)
class Example:
    context: list[Message]  # at most `context_turns` turns, merged by role
    reply: str
    conversation: (
        int  # index of its conversation in the dialogue: the unit of the train/validation split
    )


def resolve_speaker(dialogue: Dialogue, speaker: str | None) -> str:
    """The speaker as written in the log; `None` means the `assistant` role of a chat export."""
    counts = dialogue.speaker_counts()
    wanted = normalise_speaker(speaker or "assistant")
    for name, _ in counts.most_common():
        if normalise_speaker(name) == wanted:
            return name
    listed = ", ".join(
        f"{_shown(name)} ({count})" for name, count in counts.most_common(SPEAKERS_LISTED)
    )
    more = f" and {len(counts) - SPEAKERS_LISTED} more" if len(counts) > SPEAKERS_LISTED else ""
    if speaker is None:
        raise DialogueError(
            f"pass --speaker to say whose lines to learn; speakers in {dialogue.source}: {listed}{more}"
        )
    raise DialogueError(
        f"no lines by {speaker!r} in {dialogue.source}; speakers found (lines): {listed}{more}"
    )


def _shown(name: str) -> str:
    """A speaker name as it may appear in a one-line message: control characters escaped."""
    return name if name.isprintable() else repr(name)


def build_examples(
    dialogue: Dialogue, speaker: str | None, context_turns: int = DEFAULT_CONTEXT_TURNS
) -> list[Example]:
    """One example per line of `speaker` (matched case-insensitively), in log order."""
    if not isinstance(context_turns, int) or context_turns < 0:
        raise ConfigError(f"--context-turns must be 0 or more, got {context_turns!r}")
    persona = normalise_speaker(resolve_speaker(dialogue, speaker))
    examples: list[Example] = []
    for index, conversation in enumerate(dialogue.conversations):
        examples.extend(_conversation_examples(conversation, index, persona, context_turns))
    return examples


def _conversation_examples(
    conversation: Conversation, index: int, persona: str, context_turns: int
) -> list[Example]:
    others = {normalise_speaker(t.speaker) for t in conversation.turns} - {persona}
    named = len(others) > 1
    examples = []
    for position, turn in enumerate(conversation.turns):
        if normalise_speaker(turn.speaker) != persona:
            continue
        window = (
            conversation.turns[max(0, position - context_turns) : position] if context_turns else []
        )
        examples.append(
            Example(
                context=as_messages(window, persona, named), reply=turn.text, conversation=index
            )
        )
    return examples


def as_messages(turns: list[Turn], persona: str, named: bool) -> list[Message]:
    """Chat messages for a window of turns: persona -> assistant, others -> user (`NAME: ` when `named`)."""
    messages: list[Message] = []
    for turn in turns:
        mine = normalise_speaker(turn.speaker) == persona
        role = "assistant" if mine else "user"
        content = turn.text if mine or not named else f"{turn.speaker}: {turn.text}"
        if messages and messages[-1]["role"] == role:
            messages[-1] = {"role": role, "content": messages[-1]["content"] + "\n" + content}
        else:
            messages.append({"role": role, "content": content})
    return messages
