"""One message in the chat: who wrote it (you, or the persona that spoke) above its Markdown text."""

from __future__ import annotations

import asyncio

from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Markdown, Static
from textual.widgets.markdown import MarkdownStream

NO_PERSONA_LABEL = "assistant"  # the model's own voice, when no persona is active


def _parser() -> MarkdownIt:
    """GitHub-like Markdown where a single newline is a line break: verse and dialogue keep their lines."""
    parser = MarkdownIt("gfm-like")

    def hard_breaks(state: StateCore) -> None:
        for token in state.tokens:
            for child in token.children or ():
                if child.type == "softbreak":
                    child.type = "hardbreak"

    parser.core.ruler.push("hard_breaks", hard_breaks)
    return parser


def speaker_label(role: str, persona: str | None) -> str:
    """The name shown above a message: `you`, the persona's name, or `assistant`."""
    if role == "user":
        return "you"
    return persona or NO_PERSONA_LABEL


class MessageBubble(Vertical):
    """A message; an assistant reply can be streamed into it piece by piece.

    Writes and `finish` take turns (one lock), so pieces land in the order they were handed over
    and none comes after the reply is finished, however the screen interleaves them.
    """

    DEFAULT_CSS = """
    MessageBubble {
        height: auto;
        margin: 0 1 1 1;
        padding: 0 1;
        border-left: thick $accent;
    }
    MessageBubble.user { border-left: thick $primary; margin-left: 6; }
    MessageBubble.cut-short { border-left: thick $warning; }
    MessageBubble > .speaker { color: $text-muted; text-style: bold; }
    MessageBubble.assistant > .speaker { color: $accent; }
    MessageBubble.user > .speaker { color: $primary; }
    MessageBubble > Markdown { margin: 0; padding: 0; }
    MessageBubble > Markdown > MarkdownParagraph:last-child { margin-bottom: 0; }
    """

    def __init__(
        self, role: str, content: str = "", persona: str | None = None, *, cut_short: bool = False
    ) -> None:
        super().__init__(classes=role)
        self.role = role
        self.persona = persona
        self.text = content
        self.cut_short = cut_short
        self.note = "cut short" if cut_short else ""
        self._stream: MarkdownStream | None = None
        self._writing = asyncio.Lock()

    def compose(self) -> ComposeResult:
        yield Static(self._speaker_text(), classes="speaker", markup=False)
        yield Markdown(self.text, parser_factory=_parser)

    def on_mount(self) -> None:
        self.set_class(self.cut_short, "cut-short")

    def _speaker_text(self) -> str:
        label = speaker_label(self.role, self.persona)
        return f"{label} · {self.note}" if self.note else label

    async def write(self, piece: str) -> None:
        """Append a streamed piece of the reply."""
        async with self._writing:
            self.text += piece
            if self._stream is None:
                self._stream = Markdown.get_stream(self.query_one(Markdown))
            await self._stream.write(piece)

    async def finish(self, *, cut_short: bool = False, note: str = "") -> None:
        """The reply is complete (or was stopped): flush the stream and mark a cut-short reply.

        `note` says why it is short (e.g. `max tokens`); a cut-short reply without one says `cut short`.
        """
        async with self._writing:
            if self._stream is not None:
                await self._stream.stop()
                self._stream = None
            self.cut_short = cut_short
            self.note = (note or "cut short") if cut_short else ""
            self.set_class(cut_short, "cut-short")
            if not self.text:
                await self.query_one(Markdown).update(
                    "*(no reply)*" if not cut_short else "*(stopped before the first word)*"
                )
            self.query_one(".speaker", Static).update(self._speaker_text())
