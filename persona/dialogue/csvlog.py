"""CSV logs with a header row: speaker, text and an optional conversation column (names configurable)."""

from __future__ import annotations

import csv
from collections.abc import Iterator

from persona.dialogue.bounded import LogFile
from persona.dialogue.columns import Columns, find_column
from persona.dialogue.types import Conversation, Dialogue, Turn
from persona.errors import DialogueError


def read_csv(log: LogFile, columns: Columns | None = None) -> Dialogue:
    columns = columns or Columns()
    line_numbers = _LineTracker(log)
    reader = csv.reader(line_numbers, dialect=_dialect(log))
    try:
        header = next(reader, None)
        if header is None:
            raise DialogueError(f"{log.path} is empty; it needs a header row and dialogue rows")
        speaker_at, text_at = (
            find_column(header, columns.speaker),
            find_column(header, columns.text),
        )
        if speaker_at is None or text_at is None:
            missing = [
                name
                for name, at in ((columns.speaker, speaker_at), (columns.text, text_at))
                if at is None
            ]
            raise DialogueError(
                f"{log.path} has no {' or '.join(repr(m) for m in missing)} column (found {', '.join(repr(h) for h in header[:10])}); "
                "name the columns with --speaker-column and --text-column"
            )
        conversation_at = find_column(header, columns.conversation)
        conversations: list[Conversation] = []
        by_id: dict[str, Conversation] = {}
        for row in reader:
            if not row or max(speaker_at, text_at) >= len(row):
                continue
            speaker, text = row[speaker_at].strip(), row[text_at].strip()
            if not speaker or not text:
                continue
            key = (
                row[conversation_at]
                if conversation_at is not None and conversation_at < len(row)
                else ""
            )
            if key not in by_id:
                by_id[key] = Conversation([], title=key)
                conversations.append(by_id[key])
            by_id[key].turns.append(Turn(speaker, text))
    except csv.Error as exc:
        raise DialogueError(
            f"{log.path} line {line_numbers.number} is not valid CSV ({exc}); fix that row"
        ) from None
    if not conversations:
        raise DialogueError(f"{log.path} has a header but no rows with both a speaker and a text")
    return Dialogue(conversations, source=str(log.path), sha256=log.sha256)


def _dialect(log: LogFile) -> type[csv.Dialect] | csv.Dialect:
    sample = "\n".join(log.head(5))
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        return csv.excel


class _LineTracker:
    """Feeds the csv module bounded lines and remembers the line number for error messages."""

    def __init__(self, log: LogFile) -> None:
        self._lines = log.lines()
        self.number = 0

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        self.number, line = next(self._lines)
        return line + "\n"
