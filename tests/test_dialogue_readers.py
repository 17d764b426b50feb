"""Reading dialogue logs: the three formats, sniffing by content, and every bad input a user can hand us."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from persona.dialogue import Columns, read_dialogue
from persona.dialogue.bounded import LogFile
from persona.dialogue.reader import sniff_format
from persona.errors import ConfigError, DialogueError


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def turns_of(dialogue) -> list[list[tuple[str, str]]]:
    return [[(t.speaker, t.text) for t in conv.turns] for conv in dialogue.conversations]


def test_transcript_turns_conversations_and_continuations(tmp_path: Path) -> None:
    log = write(
        tmp_path,
        "chat.txt",
        "ALICE: Hello there.\nBOB: Hi Alice, how are you\n  doing today?\nALICE: Fine.\n\n"
        "BOB: New day.\n---\nALICE: Third one.\nBOB: Yes: it is.\n",
    )
    dialogue = read_dialogue(log)
    assert turns_of(dialogue) == [
        [
            ("ALICE", "Hello there."),
            ("BOB", "Hi Alice, how are you doing today?"),
            ("ALICE", "Fine."),
        ],
        [("BOB", "New day.")],
        [("ALICE", "Third one."), ("BOB", "Yes: it is.")],
    ]
    assert dialogue.speaker_counts() == {"ALICE": 3, "BOB": 3}
    assert len(dialogue.sha256) == 64


def test_jsonl_messages_shape_uses_role_or_name_and_skips_system(tmp_path: Path) -> None:
    lines = [
        {
            "messages": [
                {"role": "system", "content": "be nice"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "name": "Marvin", "content": "sigh"},
            ]
        },
    ]
    log = write(tmp_path, "chat.jsonl", "\n".join(json.dumps(line) for line in lines) + "\n")
    assert turns_of(read_dialogue(log)) == [
        [("user", "hi"), ("assistant", "hello")],
        [("user", "q"), ("Marvin", "sigh")],
    ]


def test_jsonl_turn_shape_groups_by_conversation(tmp_path: Path) -> None:
    rows = [
        {"speaker": "A", "text": "one", "conversation": 1},
        {"speaker": "B", "text": "two", "conversation": 2},
        {"speaker": "B", "text": "three", "conversation": 1},
    ]
    log = write(tmp_path, "turns.jsonl", "\n".join(json.dumps(r) for r in rows))
    assert turns_of(read_dialogue(log)) == [[("A", "one"), ("B", "three")], [("B", "two")]]


def test_csv_with_configurable_columns_and_quoted_commas(tmp_path: Path) -> None:
    log = write(
        tmp_path,
        "log.csv",
        'scene,who,line\n1,ALICE,"Hi, Bob"\n1,BOB,Hello\n2,ALICE,"Bye,\nthen"\n',
    )
    dialogue = read_dialogue(log, columns=Columns(speaker="who", text="line", conversation="scene"))
    assert turns_of(dialogue) == [
        [("ALICE", "Hi, Bob"), ("BOB", "Hello")],
        [("ALICE", "Bye,\nthen")],
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"speaker": "A", "text": "x"}\n', "jsonl"),
        ("ALICE: hi, there\nBOB: yo\n", "txt"),
        ("speaker,text\nA,hi\n", "csv"),
        ("speaker\ttext\nA\thi\n", "csv"),
    ],
)
def test_auto_format_is_sniffed_from_content_not_the_file_name(
    tmp_path: Path, text: str, expected: str
) -> None:
    log = write(tmp_path, "log.data", text)  # a misleading extension on purpose
    assert sniff_format(LogFile(log)) == expected
    assert read_dialogue(log).num_turns >= 1


def test_empty_log_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DialogueError, match="is empty"):
        read_dialogue(write(tmp_path, "empty.txt", ""))
    with pytest.raises(DialogueError, match="only blank lines"):
        read_dialogue(write(tmp_path, "blank.txt", "\n  \n\n"))


def test_text_without_speaker_lines_says_what_format_is_expected(tmp_path: Path) -> None:
    with pytest.raises(DialogueError, match="NAME: text"):
        read_dialogue(write(tmp_path, "prose.txt", "just some prose\nwith no speakers\n"))


def test_malformed_jsonl_line_names_its_line_number(tmp_path: Path) -> None:
    log = write(
        tmp_path, "bad.jsonl", '{"speaker": "A", "text": "ok"}\n\n{"speaker": "B", "text": oops}\n'
    )
    with pytest.raises(DialogueError, match=r"bad\.jsonl line 3 is not valid JSON"):
        read_dialogue(log)


def test_jsonl_object_of_unknown_shape_names_the_fields_it_wanted(tmp_path: Path) -> None:
    with pytest.raises(DialogueError, match=r"line 1: expected .*'speaker' and 'text'"):
        read_dialogue(write(tmp_path, "odd.jsonl", '{"who": "A", "said": "x"}\n'))


def test_csv_without_needed_columns_names_them(tmp_path: Path) -> None:
    log = write(tmp_path, "log.csv", "name,message\nA,hi\n")
    with pytest.raises(
        DialogueError, match=r"no 'speaker' or 'text' column \(found 'name', 'message'\)"
    ):
        read_dialogue(log, format="csv")


def test_file_that_is_not_utf8_is_refused_with_its_line(tmp_path: Path) -> None:
    log = tmp_path / "latin1.txt"
    log.write_bytes("ALICE: hello\nBOB: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(DialogueError, match=r"not UTF-8 text \(byte 0xe9 on line 2\)"):
        read_dialogue(log)


def test_a_50_mb_single_line_is_refused_after_reading_only_a_bounded_prefix(tmp_path: Path) -> None:
    log = tmp_path / "huge.jsonl"
    with log.open("wb") as handle:
        handle.write(b'{"speaker": "A", "text": "')
        chunk = b"x" * (1024 * 1024)
        for _ in range(50):
            handle.write(chunk)
        handle.write(b'"}\n')
    with pytest.raises(DialogueError, match=r"line 1 is longer than 1024 KB"):
        read_dialogue(log)


def test_missing_file_and_directory_are_clean_errors(tmp_path: Path) -> None:
    with pytest.raises(DialogueError, match="no such file"):
        read_dialogue(tmp_path / "nope.txt")
    with pytest.raises(DialogueError, match="is a directory"):
        read_dialogue(tmp_path)


def test_unknown_format_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"--format must be one of auto, txt, jsonl, csv, got 'xml'"
    ):
        read_dialogue(write(tmp_path, "a.txt", "A: b\n"), format="xml")
