"""Saved conversations, newest first; Enter opens one to continue it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M")


class ConversationsScreen(ModalScreen[int | None]):
    """Dismisses with the chosen conversation's id, or None when closed with Esc."""

    BINDINGS = [Binding("escape", "close", "Close")]
    DEFAULT_CSS = """
    ConversationsScreen { align: center middle; }
    ConversationsScreen > Vertical {
        width: 95%; max-width: 120; height: auto; max-height: 85%;
        border: round $primary; background: $surface; padding: 0 1;
    }
    ConversationsScreen .title { text-style: bold; padding-bottom: 1; }
    ConversationsScreen DataTable { height: auto; max-height: 24; }
    """

    def __init__(self, conversations: Sequence[Any], current: int | None = None) -> None:
        super().__init__()
        self.conversations = sorted(conversations, key=lambda c: (c.updated, c.id), reverse=True)
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical():
            title = "Saved conversations (Enter opens, Esc closes)"
            yield Label(
                title if self.conversations else "No saved conversations yet.", classes="title"
            )
            table: DataTable[str] = DataTable(cursor_type="row", zebra_stripes=True)
            table.add_columns("#", "title", "personas", "messages", "updated")
            for conversation in self.conversations:
                marker = "● " if conversation.id == self.current else ""
                table.add_row(
                    f"{marker}{conversation.id}",
                    conversation.title or "untitled",
                    ", ".join(name or "(none)" for name in conversation.personas) or "–",
                    str(conversation.message_count),
                    _when(conversation.updated),
                    key=str(conversation.id),
                )
            yield table

    def on_mount(self) -> None:
        self.query_one(DataTable).focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key.value is not None:
            self.dismiss(int(event.row_key.value))

    def action_close(self) -> None:
        self.dismiss(None)
