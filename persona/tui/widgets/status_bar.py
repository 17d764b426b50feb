"""The status line: active persona, model, generation settings, speed of the last reply."""

from __future__ import annotations

from textual.reactive import reactive
from textual.widgets import Static

NO_PERSONA = "(none)"


class StatusBar(Static):
    DEFAULT_CSS = """
    StatusBar {
        height: 1;
        padding: 0 1;
        background: $panel;
        color: $text;
    }
    """

    persona: reactive[str | None] = reactive(None)
    model: reactive[str] = reactive("")
    settings: reactive[str] = reactive("")
    tokens_per_second: reactive[float | None] = reactive(None)
    state: reactive[str] = reactive("ready")

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id, markup=False)

    def render(self) -> str:
        speed = f"{self.tokens_per_second:.1f} tok/s" if self.tokens_per_second else "– tok/s"
        parts = [
            f"persona: {self.persona or NO_PERSONA}",
            self.model,
            self.settings,
            speed,
            self.state,
        ]
        return " │ ".join(part for part in parts if part)
