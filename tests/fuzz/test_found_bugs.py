"""Inputs the fuzzers found crashing a reader with something other than a one-line PersonaError.

Each is kept here as a plain test so the fix stays fixed whatever the fuzzers draw next time.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from persona.dialogue import build_examples, read_dialogue
from persona.errors import DialogueError
from tests.fuzz.harness import assert_one_line


def test_a_log_with_bare_carriage_returns_is_sniffed_not_crashed(tmp_path: Path) -> None:
    path = tmp_path / "mac.txt"
    path.write_bytes(b"---\rALICE: hello\nBOB: hi\n")
    dialogue = read_dialogue(path)  # sniffing once raised csv.Error on the bare \r
    assert dialogue.num_turns == 1


def test_a_deeply_nested_jsonl_line_is_refused_naming_its_line(tmp_path: Path) -> None:
    path = tmp_path / "deep.jsonl"
    path.write_text('{"speaker": "A", "text": "hi"}\n' + '{"a":' * 100_000 + "\n")
    with pytest.raises(DialogueError, match="line 2 nests JSON too deeply") as exc:
        read_dialogue(path, "jsonl")  # once a RecursionError
    assert_one_line(str(exc.value))


def test_content_parts_whose_text_is_not_a_string_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "parts.jsonl"
    parts = [{"type": "text", "text": 5}, {"type": "text", "text": "kept"}, {"type": "image"}]
    path.write_text(json.dumps({"messages": [{"role": "user", "content": parts}, {"role": "assistant", "content": "ok"}]}) + "\n")
    dialogue = read_dialogue(path)  # once a TypeError from str.join
    assert [turn.text for turn in dialogue.conversations[0].turns] == ["kept", "ok"]


def test_speaker_names_with_control_characters_are_escaped_in_messages(tmp_path: Path) -> None:
    path = tmp_path / "cr.txt"
    path.write_bytes(b"\xc2\xb9\rALICE: hi\nB\x1b[2JOB: there\n")
    dialogue = read_dialogue(path, "txt")
    with pytest.raises(DialogueError) as exc:
        build_examples(dialogue, "carol")
    message = str(exc.value)
    assert_one_line(message)  # a \r or an escape sequence once reached the terminal as is
    assert r"'¹\rALICE' (1)" in message and r"'B\x1b[2JOB' (1)" in message
