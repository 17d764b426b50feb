"""The conversation's messages, oldest first, with a hint in place of them while there are none."""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from persona.tui.session import Turn
from persona.tui.widgets.message_bubble import MessageBubble


def bubble_for(turn: Turn) -> MessageBubble:
    return MessageBubble(turn.role, turn.content, turn.persona, cut_short=turn.cut_short)


class ChatLog(VerticalScroll):
    DEFAULT_CSS = """
    ChatLog { height: 1fr; }
    ChatLog > #empty { color: $text-muted; padding: 1 2; }
    """

    def __init__(self, turns: Sequence[Turn] = (), *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._initial = list(turns)

    def compose(self) -> ComposeResult:
        yield Static("", id="empty", markup=False)
        yield from (bubble_for(turn) for turn in self._initial)

    def on_mount(self) -> None:
        self.anchor()

    def hint(self, text: str | None) -> None:
        """Show `text` where the messages go (None: hide it)."""
        empty = self.query_one("#empty", Static)
        empty.display = text is not None
        if text is not None:
            empty.update(text)

    async def add(self, turn: Turn) -> MessageBubble:
        bubble = bubble_for(turn)
        await self.mount(bubble)
        return bubble

    async def begin_reply(self, persona: str | None) -> MessageBubble:
        """An empty bubble for a reply about to stream in, scrolled into view."""
        bubble = await self.add(Turn("assistant", "", persona))
        self.scroll_end(animate=False)
        return bubble

    async def drop_last(self, count: int = 1) -> None:
        """Remove the latest `count` messages."""
        bubbles = list(self.query(MessageBubble))
        for bubble in bubbles[len(bubbles) - count :] if count else ():
            await bubble.remove()

    async def show(self, turns: Sequence[Turn]) -> None:
        """Replace every message with `turns` (another conversation was opened)."""
        await self.query(MessageBubble).remove()
        if turns:
            await self.mount_all([bubble_for(turn) for turn in turns])
        self.scroll_end(animate=False)
