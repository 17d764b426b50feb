"""The persona picker: every persona in the library with its description, plus the model's own voice."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from persona.tui.messages import PersonaChoice

NONE_ID = "\x00none"  # option id of "no persona"; cannot clash with a persona name


class PersonaPicker(ModalScreen[PersonaChoice | None]):
    """Dismisses with the chosen persona, or None when closed with Esc."""

    BINDINGS = [Binding("escape", "close", "Close")]
    DEFAULT_CSS = """
    PersonaPicker { align: center middle; }
    PersonaPicker > Vertical {
        width: 80%; max-width: 90; height: auto; max-height: 80%;
        border: round $secondary; background: $surface; padding: 0 1;
    }
    PersonaPicker .title { text-style: bold; padding-bottom: 1; }
    PersonaPicker .hint { color: $text-muted; padding-top: 1; }
    PersonaPicker OptionList { height: auto; max-height: 20; border: none; }
    """

    def __init__(self, personas: Sequence[Any], current: str | None) -> None:
        super().__init__()
        self.personas = list(personas)
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Speak as which persona? (Enter picks, Esc closes)", classes="title")
            yield OptionList(*self._options())
            if not self.personas:
                yield Label(
                    "The library has no personas yet: train one with `persona train` or add one with `persona import`.",
                    classes="hint",
                )

    def _options(self) -> list[Option]:
        width = max([len("(none)"), *(len(p.name) for p in self.personas)])
        rows = [(NONE_ID, "(none)", "the model's own voice, no soft prompt", self.current is None)]
        rows += [
            (p.name, p.name, p.description or "", p.name == self.current) for p in self.personas
        ]
        return [
            Option(self._line(label.ljust(width), text, current), id=key)
            for key, label, text, current in rows
        ]

    @staticmethod
    def _line(name: str, description: str, current: bool) -> Content:
        """`● name   description`: the dot marks the persona speaking now."""
        return Content.assemble(
            ("● " if current else "  ", "bold"), (name, "bold"), "  ", (description, "dim")
        )

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        names = [NONE_ID] + [p.name for p in self.personas]
        options.highlighted = names.index(self.current) if self.current in names else 0
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        chosen = event.option.id
        self.dismiss(PersonaChoice(None if chosen == NONE_ID else chosen))

    def action_close(self) -> None:
        self.dismiss(None)
