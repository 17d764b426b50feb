"""Read any supported dialogue log: `--format auto` decides by content, not by file name."""

from __future__ import annotations

import csv
from pathlib import Path

from persona.dialogue.bounded import LogFile
from persona.dialogue.columns import Columns
from persona.dialogue.csvlog import read_csv
from persona.dialogue.jsonl import read_jsonl
from persona.dialogue.transcript import match_turn, read_transcript
from persona.dialogue.types import Dialogue
from persona.errors import ConfigError, DialogueError

FORMATS = ("auto", "txt", "jsonl", "csv")


def sniff_format(log: LogFile) -> str:
    """`jsonl` if the first line is a JSON object, `txt` if it starts with `NAME:`, `csv` if it splits into columns."""
    head = log.head()
    if not head:
        raise DialogueError(
            f"{log.path} holds only blank lines; it needs dialogue lines such as `NAME: text`"
        )
    first = head[0].lstrip()
    if first.startswith("{"):
        return "jsonl"
    if match_turn(first) is not None:
        return "txt"
    try:
        columns = len(next(csv.reader([first]), []))
    except csv.Error:  # e.g. a bare carriage return: not a CSV row, so not CSV
        columns = 0
    if columns >= 2 or "\t" in first or ";" in first:
        return "csv"
    return "txt"


def read_dialogue(
    path: str | Path, format: str = "auto", columns: Columns | None = None
) -> Dialogue:
    """Every conversation in the log at `path` (bounded reading, strict UTF-8)."""
    if format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    columns = columns or Columns()
    log = LogFile(path)
    chosen = sniff_format(log) if format == "auto" else format
    if chosen == "jsonl":
        return read_jsonl(log, columns)
    if chosen == "csv":
        return read_csv(log, columns)
    return read_transcript(log)
