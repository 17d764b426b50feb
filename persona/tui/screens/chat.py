"""The chat screen: messages, input, status line; replies are written by a worker thread.

The screen lays out widgets, shows what it is told and writes replies. What the chat does lives in
plain classes: the decisions in `ChatController` (this screen is its `ChatView`), the conversation
in `ChatSession`, the speaker in `PersonaSource`, the slash commands in `commands`, a reply's
generation in `reply.write_reply`. A reply's pieces reach the screen through a `PieceBuffer`, so a
slow redraw coalesces pieces instead of slowing generation. The finished reply is handed back with
`call_from_thread`, which waits, so a reply is saved before its worker ends (quitting waits for
that).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Static
from textual.worker import Worker

from persona.engine.contract import Request
from persona.tui.commands import (
    SlashCommand,
)
from persona.tui.controller import ChatController, Chosen
from persona.tui.messages import CommandRequested, PersonaRequested
from persona.tui.personas import Speaker
from persona.tui.pieces import PieceBuffer
from persona.tui.reply import ReplyOutcome, write_reply
from persona.tui.screens.conversations import ConversationsScreen
from persona.tui.screens.help import HelpScreen
from persona.tui.screens.persona_picker import PersonaPicker
from persona.tui.session import Turn
from persona.tui.state import ChatState
from persona.tui.terminal import MIN_HEIGHT, MIN_WIDTH
from persona.tui.widgets.chat_input import ChatInput
from persona.tui.widgets.chat_log import ChatLog
from persona.tui.widgets.message_bubble import MessageBubble, speaker_label
from persona.tui.widgets.status_bar import StatusBar

FLUSH_INTERVAL = 0.05  # seconds: the reply on screen is redrawn at most this often while it streams


@dataclass
class LiveReply:
    """A reply being written: where it is shown, its pieces in transit, and how to stop it."""

    bubble: MessageBubble
    pieces: PieceBuffer = field(default_factory=PieceBuffer)
    cancel: threading.Event = field(default_factory=threading.Event)
    worker: Worker[None] | None = None


class ChatScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "cancel_reply", "Stop reply"),
        Binding("f2,ctrl+o", "command('personas')", "Persona"),
        Binding("f3", "command('conversations')", "Conversations"),
        Binding("ctrl+n", "command('new')", "New"),
        Binding("ctrl+r", "command('retry')", "Retry", show=False),
        Binding("f1", "command('help')", "Help"),
    ]
    DEFAULT_CSS = """
    ChatScreen #too-small { display: none; width: 100%; height: 100%; content-align: center middle; }
    ChatScreen.too-small #too-small { display: block; }
    ChatScreen.too-small #messages, ChatScreen.too-small ChatInput, ChatScreen.too-small StatusBar { display: none; }
    """

    class PiecesReady(Message):
        """The worker buffered text for `reply` (posted once until the screen takes it)."""

        def __init__(self, reply: LiveReply) -> None:
            super().__init__()
            self.reply = reply

    def __init__(self, state: ChatState) -> None:
        super().__init__()
        self.state = state
        self.controller = ChatController(state, self)
        self._reply: LiveReply | None = None

    # ---- layout ---------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield ChatLog(self.state.session.turns, id="messages")
        yield ChatInput(id="input")
        yield StatusBar(id="status")
        yield Static(
            f"The terminal is too small: make it at least {MIN_WIDTH}×{MIN_HEIGHT}.", id="too-small"
        )
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(StatusBar).model = self.state.model_label
        self.refresh_status()
        self.query_one(ChatInput).focus()

    def on_resize(self) -> None:
        self.set_class(self.size.width < MIN_WIDTH or self.size.height < MIN_HEIGHT, "too-small")

    @property
    def generating(self) -> bool:
        return self.state.session.replying

    # ---- messages in ----------------------------------------------------------------------------

    async def on_chat_input_submitted(self, event: ChatInput.Submitted) -> None:
        await self.controller.submit(event.text)

    async def on_command_requested(self, message: CommandRequested) -> None:
        await self.controller.run(message.command)

    async def on_persona_requested(self, message: PersonaRequested) -> None:
        await self.controller.shown(self.controller.switch_persona(message.name))

    async def action_command(self, name: str) -> None:
        await self.controller.run(SlashCommand(name))

    def action_cancel_reply(self) -> None:
        if self._reply is not None:
            self._reply.cancel.set()

    # ---- the view (ChatView) --------------------------------------------------------------------

    def refresh_status(self) -> None:
        """The status line and the empty-chat hint, after the persona, settings or turns changed."""
        status = self.query_one(StatusBar)
        status.persona = self.state.personas.name
        config = self.state.config
        status.settings = (
            f"temp {config.temperature:g} · top_p {config.top_p:g} · max {config.max_new_tokens}"
        )
        speaker = speaker_label("assistant", self.state.personas.name)
        empty = not self.state.session.turns and not self.generating
        self.query_one(ChatLog).hint(
            f"Say something to {speaker}. F2 picks a persona, /help lists the commands."
            if empty
            else None
        )

    def clear_input(self) -> None:
        self.query_one(ChatInput).clear()

    async def show(self, turns: Sequence[Turn]) -> None:
        await self.query_one(ChatLog).show(turns)

    async def add(self, turn: Turn) -> None:
        await self.query_one(ChatLog).add(turn)

    async def drop_last(self, count: int = 1) -> None:
        await self.query_one(ChatLog).drop_last(count)

    def open_picker(self, speakers: list[Speaker], current: str | None, then: Chosen) -> None:
        self.app.push_screen(PersonaPicker(speakers, current), then)

    def open_conversations(
        self, conversations: list[Any], current: int | None, then: Chosen
    ) -> None:
        self.app.push_screen(ConversationsScreen(conversations, current), then)

    def open_help(self) -> None:
        self.app.push_screen(HelpScreen())

    async def quit(self) -> None:
        await self.app.action_quit()

    # ---- replies --------------------------------------------------------------------------------

    async def start_reply(self) -> None:
        request = self.state.begin_reply()
        persona = self.state.personas.name
        reply = LiveReply(await self.query_one(ChatLog).begin_reply(persona))
        self._reply = reply
        self.query_one(StatusBar).state = "writing…"
        reply.worker = self._write(reply, request, persona)
        self.refresh_status()

    @work(thread=True, exclusive=True, group="reply", exit_on_error=False)
    def _write(self, reply: LiveReply, request: Request, persona: str | None) -> None:
        def hand_over(piece: str, tokens_per_second: float) -> None:
            if reply.pieces.push(piece, tokens_per_second):
                self.post_message(self.PiecesReady(reply))  # thread-safe, and does not wait

        runner = self.state.backend.runner
        outcome = write_reply(runner, request, persona, reply.cancel, hand_over)
        try:
            # Textual's annotation infers Never for a coroutine returning None; it runs it as any
            self.app.call_from_thread(self._reply_done, reply, outcome)  # type: ignore[arg-type]
        except RuntimeError:  # the app is already gone
            pass

    async def on_chat_screen_pieces_ready(self, message: PiecesReady) -> None:
        reply = message.reply
        drained = reply.pieces.take()
        if drained.text and reply.bubble.is_mounted:
            await reply.bubble.write(drained.text)
        if drained.tokens_per_second:
            self.query_one(StatusBar).tokens_per_second = drained.tokens_per_second
        # at most one redraw per FLUSH_INTERVAL: the next request may come once it has passed
        self.set_timer(FLUSH_INTERVAL, partial(self._reopen, reply))

    def _reopen(self, reply: LiveReply) -> None:
        if reply.pieces.reopen():
            self.post_message(self.PiecesReady(reply))

    async def _reply_done(self, reply: LiveReply, outcome: ReplyOutcome) -> None:
        rest = reply.pieces.close()  # what the screen had not shown yet
        if rest.text:
            await reply.bubble.write(rest.text)
        self._reply = None
        turn = self.state.session.end_reply(outcome)
        status = self.query_one(StatusBar)
        status.state = outcome.end_state
        if outcome.tokens_per_second:
            status.tokens_per_second = outcome.tokens_per_second
        if outcome.error:
            self.notify(outcome.error, severity="error")
        if turn is None:
            await reply.bubble.remove()
            if outcome.finish_reason == "cancelled":
                self.notify("stopped before the first word; nothing was kept", severity="warning")
            self.refresh_status()
            return
        await reply.bubble.finish(cut_short=outcome.cut_short, note=outcome.note)
        self.controller.keep(turn)

    async def stop_reply(self) -> None:
        """Cancel a reply being written and wait until it is saved (marked cut short)."""
        reply = self._reply
        if reply is None or reply.worker is None:
            return
        reply.cancel.set()
        await reply.worker.wait()
