"""JSONL logs, in either of two shapes (they may not be mixed in one file):

* one conversation per line, the OpenAI chat format: `{"messages": [{"role", "content"}, ...]}`;
  a message's speaker is its `name` if it has one, else its role (so the persona is usually
  `assistant`); system messages are not turns and are skipped;
* one turn per line: `{"speaker": ..., "text": ...[, "conversation": ...]}` (field names from
  `Columns`); turns with the same conversation value form one conversation, in file order.
"""

from __future__ import annotations

import json
from typing import Any

from persona.dialogue.bounded import LogFile
from persona.dialogue.columns import Columns
from persona.dialogue.types import Conversation, Dialogue, Turn
from persona.errors import DialogueError

MESSAGES_SHAPE = "messages"
TURN_SHAPE = "turn"


def read_jsonl(log: LogFile, columns: Columns | None = None) -> Dialogue:
    columns = columns or Columns()
    conversations: list[Conversation] = []
    by_id: dict[str, Conversation] = {}
    shape: str | None = None
    for number, line in log.lines():
        if not line.strip():
            continue
        record = _parse(log, number, line)
        line_shape = _shape_of(log, number, record, columns)
        if shape is not None and line_shape != shape:
            raise DialogueError(
                f"{log.path} line {number} is a {line_shape}-shaped record but earlier lines are {shape}-shaped; use one shape per file"
            )
        shape = line_shape
        if shape == MESSAGES_SHAPE:
            turns = _message_turns(log, number, record["messages"])
            if turns:
                conversations.append(Conversation(turns, title=f"line {number}"))
            continue
        speaker, text = record[columns.speaker], record[columns.text]
        if not isinstance(speaker, str) or not isinstance(text, str):
            raise DialogueError(
                f"{log.path} line {number}: {columns.speaker!r} and {columns.text!r} must be strings"
            )
        if not text.strip() or not speaker.strip():
            continue
        key = str(record.get(columns.conversation, ""))
        if key not in by_id:
            by_id[key] = Conversation([], title=key)
            conversations.append(by_id[key])
        by_id[key].turns.append(Turn(speaker.strip(), text.strip()))
    conversations = [conv for conv in conversations if conv.turns]
    if not conversations:
        raise DialogueError(
            f"{log.path} holds no dialogue turns; each line needs a non-empty message or text"
        )
    return Dialogue(conversations, source=str(log.path), sha256=log.sha256)


def _parse(log: LogFile, number: int, line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DialogueError(
            f"{log.path} line {number} is not valid JSON ({exc.msg} at column {exc.colno}); fix or remove that line"
        ) from None
    except RecursionError:
        raise DialogueError(
            f"{log.path} line {number} nests JSON too deeply to be a dialogue turn; fix or remove that line"
        ) from None
    if not isinstance(record, dict):
        raise DialogueError(
            f"{log.path} line {number} is a JSON {type(record).__name__}, expected an object"
        )
    return record


def _shape_of(log: LogFile, number: int, record: dict[str, Any], columns: Columns) -> str:
    if isinstance(record.get("messages"), list):
        return MESSAGES_SHAPE
    if columns.speaker in record and columns.text in record:
        return TURN_SHAPE
    raise DialogueError(
        f'{log.path} line {number}: expected {{"messages": [...]}} or an object with '
        f"{columns.speaker!r} and {columns.text!r} fields, found fields {sorted(record)[:8]}"
    )


def _message_turns(log: LogFile, number: int, messages: list[Any]) -> list[Turn]:
    turns = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise DialogueError(
                f'{log.path} line {number}: each message needs a "role" and a "content"'
            )
        content = message.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = " ".join(
                part["text"]
                for part in content
                if isinstance(part, dict) and isinstance(part.get("text"), str)
            )
        if not isinstance(content, str):
            raise DialogueError(
                f"{log.path} line {number}: a {message['role']!r} message has no text content"
            )
        if message["role"] == "system" or not content.strip():
            continue
        name = message.get("name")
        speaker = name if isinstance(name, str) and name.strip() else message["role"]
        turns.append(Turn(speaker.strip(), content.strip()))
    return turns
