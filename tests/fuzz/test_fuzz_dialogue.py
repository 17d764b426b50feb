"""Fuzz the dialogue log readers (txt, jsonl, csv, and sniffing) with generated and mangled logs.

Each case writes one log, reads it with a forced or sniffed format and, when it reads, builds the
training examples for one of its speakers: the whole path `persona train` takes before a model loads.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from persona.dialogue import Columns, build_examples, read_dialogue
from tests.fuzz.harness import check, fuzz_settings

NAMES = st.sampled_from(
    ["ALICE", "bob", "Sir John", "assistant", "user", "system", "X", "Ünïcode", "a:b", "  ", ""]
)
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60)
LINE_ENDS = st.sampled_from(["\n", "\r\n", "\r", ""])
JSON_LEAVES = st.none() | st.booleans() | st.integers() | st.floats() | TEXT
JSON = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
DEEP = st.builds(
    lambda opener, depth: opener * depth,
    st.sampled_from(["[", '{"a":', '{"messages":[']),
    st.integers(1, 5000),
)


def turn_line(name: str, text: str) -> str:
    return f"{name}: {text}"


TXT_LINE = st.one_of(
    st.builds(turn_line, NAMES, TEXT), TEXT, st.just("---"), st.just(""), st.just("\ufeffALICE: hi")
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool"]) | JSON},
    optional={
        "content": TEXT
        | st.lists(st.dictionaries(st.sampled_from(["type", "text"]), JSON, max_size=2), max_size=3)
        | JSON,
        "name": NAMES | JSON,
    },
)
JSONL_RECORD = st.one_of(
    st.fixed_dictionaries({"messages": st.lists(MESSAGE, max_size=6)}),
    st.fixed_dictionaries(
        {"speaker": NAMES | JSON, "text": TEXT | JSON}, optional={"conversation": JSON}
    ),
    JSON,
)
GOOD_TURN = st.fixed_dictionaries(
    {"speaker": NAMES, "text": TEXT}, optional={"conversation": st.integers(0, 3) | TEXT}
)
GOOD_CHAT = st.fixed_dictionaries(
    {
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "assistant"]), "content": TEXT}
            ),
            max_size=6,
        )
    }
)
JSONL_LINE = st.one_of(
    *[st.one_of(GOOD_TURN, GOOD_CHAT).map(json.dumps)] * 8,
    JSONL_RECORD.map(lambda value: json.dumps(value, allow_nan=True)),
    DEEP,
    TEXT,
)
CSV_CELL = st.one_of(
    NAMES,
    NAMES,
    TEXT,
    TEXT,
    st.builds(lambda t: '"' + t.replace('"', '""') + '"', TEXT),
    st.just('"unclosed'),
)
DELIMITER = st.sampled_from([",", ";", "\t", "|", " "])
CSV_HEADER = st.one_of(
    *[st.permutations(["speaker", "text", "conversation"])] * 4,
    st.lists(
        st.sampled_from(["speaker", "text", "conversation", "Speaker ", "who", ""]) | TEXT,
        max_size=5,
    ),
)
COLUMNS = st.one_of(  # (speaker, text, conversation) column names; Columns itself may refuse them
    *[st.just(None)] * 6,
    st.tuples(
        st.sampled_from(["speaker", "who"]) | TEXT,
        st.sampled_from(["text", "said"]) | TEXT,
        st.sampled_from(["conversation"]) | TEXT,
    ),
)
CLEAN = [b""] * 6


def csv_log(header: list[str], rows: list[list[str]], delimiter: str) -> str:
    return "\n".join(delimiter.join(cells) for cells in [header, *rows])


def lines_to_bytes(lines: list[str], end: str, encoding_damage: bytes) -> bytes:
    return (end.join(lines)).encode("utf-8", "surrogatepass") + encoding_damage


TXT_LOG = st.builds(
    lines_to_bytes,
    st.lists(TXT_LINE, max_size=30),
    LINE_ENDS,
    st.sampled_from([*CLEAN, b"\xff", b"\x00", b"\xe9t\xe9"]),
)
JSONL_LOG = st.builds(
    lines_to_bytes,
    st.lists(JSONL_LINE, max_size=10),
    st.sampled_from(["\n", "\r\n"]),
    st.sampled_from([*CLEAN, b"\n{", b"\xc3"]),
)
CSV_LOG = st.builds(
    lambda header, rows, delimiter, damage: (
        csv_log(header, rows, delimiter).encode("utf-8", "surrogatepass") + damage
    ),
    CSV_HEADER,
    st.lists(st.lists(CSV_CELL, min_size=2, max_size=4), max_size=12),
    DELIMITER,
    st.sampled_from([*CLEAN, b"\x00", b'\n"open']),
)


def read_and_learn(
    path: Path, fmt: str, names: tuple[str, str, str] | None, speaker: str | None
) -> int:
    dialogue = read_dialogue(path, fmt, Columns(*names) if names else None)
    assert dialogue.num_turns > 0 and len(dialogue.sha256) == 64
    for conversation in dialogue.conversations:
        for turn in conversation.turns:
            assert turn.speaker.strip() and turn.text.strip(), (
                f"an empty turn came out of {fmt}: {turn!r}"
            )
    who = speaker if speaker is not None else next(iter(dialogue.speaker_counts()))
    return len(build_examples(dialogue, who))


def fuzz_reader(
    reader: str, data: bytes, fmt: str, columns: tuple[str, str, str] | None, speaker: str | None
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "log.any"
        path.write_bytes(data)
        check(reader, lambda: read_and_learn(path, fmt, columns, speaker))


SPEAKER = st.none() | NAMES


def test_fuzz_transcript_logs() -> None:
    @fuzz_settings(1200)
    @given(
        data=st.one_of(TXT_LOG, TXT_LOG, TXT_LOG, st.binary(max_size=400)),
        fmt=st.sampled_from(["txt", "auto"]),
        speaker=SPEAKER,
    )
    def case(data: bytes, fmt: str, speaker: str | None) -> None:
        fuzz_reader("dialogue txt", data, fmt, None, speaker)

    case()


def test_fuzz_jsonl_logs() -> None:
    @fuzz_settings(1200)
    @given(data=JSONL_LOG, fmt=st.sampled_from(["jsonl", "auto"]), columns=COLUMNS, speaker=SPEAKER)
    def case(
        data: bytes, fmt: str, columns: tuple[str, str, str] | None, speaker: str | None
    ) -> None:
        fuzz_reader("dialogue jsonl", data, fmt, columns, speaker)

    case()


def test_fuzz_csv_logs() -> None:
    @fuzz_settings(1200)
    @given(data=CSV_LOG, fmt=st.sampled_from(["csv", "auto"]), columns=COLUMNS, speaker=SPEAKER)
    def case(
        data: bytes, fmt: str, columns: tuple[str, str, str] | None, speaker: str | None
    ) -> None:
        fuzz_reader("dialogue csv", data, fmt, columns, speaker)

    case()
