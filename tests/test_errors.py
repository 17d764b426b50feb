"""first_line: the one way an exception becomes part of a one-line message."""

from __future__ import annotations

from persona.errors import first_line


def test_the_first_line_of_a_message_of_several() -> None:
    assert first_line(ValueError("  bad header\nat byte 12\n")) == "bad header"


def test_an_empty_message_gives_the_type_name() -> None:
    assert first_line(ValueError()) == "ValueError"
    assert first_line(OSError("")) == "OSError"
    assert first_line(RuntimeError("\n\n")) == "RuntimeError"


def test_a_message_that_opens_with_blank_lines_gives_its_first_words() -> None:
    assert first_line(ValueError("\n  \nmissing key")) == "missing key"


def test_a_long_line_is_cut_to_the_limit() -> None:
    assert first_line(ValueError("x" * 500)) == "x" * 200
    assert first_line(ValueError("x" * 500), 120) == "x" * 120
