"""Transcript text: `NAME: line` per turn; a blank line or `---` ends a conversation.

A line without a `NAME:` prefix continues the turn above it (wrapped text) and is joined to it
with a space. Text before the first turn of a conversation (a title, a stage note) is skipped.
"""

from __future__ import annotations

import re

from persona.dialogue.bounded import LogFile
from persona.dialogue.types import Conversation, Dialogue, Turn
from persona.errors import DialogueError

# A speaker name: starts with a letter, at most 40 characters and 4 words, no comma or colon.
TURN_RE = re.compile(r"^\s*(?P<name>[^\W\d_][^:,\t]{0,39}?)\s*:(?:\s+(?P<text>.*))?$")
SEPARATOR_RE = re.compile(r"^\s*-{3,}\s*$")


def match_turn(line: str) -> tuple[str, str] | None:
    """(speaker, text) if the line starts a turn, else None."""
    found = TURN_RE.match(line)
    if not found or len(found["name"].split()) > 4:
        return None
    return found["name"].strip(), (found["text"] or "").strip()


def read_transcript(log: LogFile) -> Dialogue:
    conversations: list[Conversation] = []
    current: list[list[str]] = []  # [speaker, text] of each turn of the conversation being read

    def close() -> None:
        turns = [Turn(speaker, text) for speaker, text in current if text]
        if turns:
            conversations.append(Conversation(turns))
        current.clear()

    for _, line in log.lines():
        if not line.strip() or SEPARATOR_RE.match(line):
            close()
            continue
        turn = match_turn(line)
        if turn is not None:
            current.append(list(turn))
        elif current:  # a continuation line
            current[-1][1] = f"{current[-1][1]} {line.strip()}".strip()
    close()
    if not conversations:
        raise DialogueError(
            f"{log.path} has no `NAME: text` lines; write one turn per line as `NAME: text`, or pass --format jsonl|csv"
        )
    return Dialogue(conversations, source=str(log.path), sha256=log.sha256)
