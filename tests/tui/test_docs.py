"""docs/tui.md is the same table /help shows, so the README never drifts from the app."""

from __future__ import annotations

from pathlib import Path

from persona.tui.commands import COMMANDS
from persona.tui.keys import help_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "tui.md"


def test_docs_tui_md_holds_the_help_tables() -> None:
    expected = help_markdown().replace("## ", "### ")  # one level down under "Keys and commands"
    assert expected in DOC.read_text(), (
        "docs/tui.md is stale: paste persona.tui.keys.help_markdown() into it"
    )


def test_every_command_is_documented() -> None:
    text = help_markdown()
    assert all(f"/{name}" in text for name in COMMANDS)
