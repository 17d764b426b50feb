"""The chat screen: messages, input, status line; replies are generated in a worker thread.

The worker never waits for the screen while it decodes: pieces go into a buffer, and one message
at a time asks the screen to show what has gathered (so a slow redraw coalesces pieces instead
of slowing generation). The finished reply is handed back with `call_from_thread`, which waits,
so a reply is saved before the worker ends (quitting waits for that).
"""

from __future__ import annotations

import threading
from asyncio import Lock
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Static
from textual.worker import Worker

from persona.errors import PersonaError
from persona.tui.commands import (
    CommandError,
    SlashCommand,
    is_command,
    parse_command,
    parse_setting,
)
from persona.tui.messages import CommandRequested, PersonaChoice, PersonaRequested
from persona.tui.session import Turn
from persona.tui.terminal import MIN_HEIGHT, MIN_WIDTH
from persona.tui.widgets.chat_input import ChatInput
from persona.tui.widgets.message_bubble import MessageBubble, speaker_label
from persona.tui.widgets.status_bar import StatusBar

if TYPE_CHECKING:
    from persona.tui.app import PersonaChatApp


FLUSH_INTERVAL = 0.05  # seconds: the reply on screen is redrawn at most this often while it streams


@dataclass
class ReplyOutcome:
    text: str
    persona: str | None
    finish_reason: str  # stop | length | cancelled | error
    new_tokens: int = 0
    tokens_per_second: float = 0.0
    error: str | None = None

    @property
    def cut_short(self) -> bool:
        return self.finish_reason != "stop"


class ChatScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "cancel_reply", "Stop reply"),
        Binding("f2,ctrl+o", "pick_persona", "Persona"),
        Binding("f3", "conversations", "Conversations"),
        Binding("ctrl+n", "new_conversation", "New"),
        Binding("ctrl+r", "retry", "Retry", show=False),
        Binding("f1", "help", "Help"),
    ]
    DEFAULT_CSS = """
    ChatScreen #messages { height: 1fr; }
    ChatScreen #empty { color: $text-muted; padding: 1 2; }
    ChatScreen #too-small { display: none; width: 100%; height: 100%; content-align: center middle; }
    ChatScreen.too-small #too-small { display: block; }
    ChatScreen.too-small #messages, ChatScreen.too-small ChatInput, ChatScreen.too-small StatusBar { display: none; }
    """

    app: PersonaChatApp

    class PiecesReady(Message):
        """The worker buffered text for the reply's bubble (posted once until the screen takes it)."""

    def __init__(self) -> None:
        super().__init__()
        self._worker: Worker[None] | None = None
        self._cancel: threading.Event | None = None
        self._pending: list[str] = []  # streamed text not shown yet (worker thread -> screen)
        self._pending_bubble: MessageBubble | None = None  # the reply it belongs to
        self._pending_speed = 0.0
        self._pending_lock = threading.Lock()
        self._flush_posted = False
        self._bubble_lock = Lock()  # one writer to a reply's bubble at a time

    # ---- layout ---------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="messages"):
            yield Static("", id="empty", markup=False)
            for turn in self.app.session.turns:
                yield MessageBubble(turn.role, turn.content, turn.persona, cut_short=turn.cut_short)
        yield ChatInput(id="input")
        yield StatusBar(id="status")
        yield Static(
            f"The terminal is too small: make it at least {MIN_WIDTH}×{MIN_HEIGHT}.", id="too-small"
        )
        yield Footer()

    def on_mount(self) -> None:
        status = self.query_one(StatusBar)
        status.model = self.app.model_label
        self._refresh_status()
        self.query_one("#messages", VerticalScroll).anchor()
        self._refresh_empty()
        self.query_one(ChatInput).focus()

    def on_resize(self) -> None:
        self.set_class(self.size.width < MIN_WIDTH or self.size.height < MIN_HEIGHT, "too-small")

    def _refresh_status(self) -> None:
        status = self.query_one(StatusBar)
        status.persona = self.app.personas.name
        config = self.app.config
        status.settings = (
            f"temp {config.temperature:g} · top_p {config.top_p:g} · max {config.max_new_tokens}"
        )

    def _refresh_empty(self) -> None:
        empty = self.query_one("#empty", Static)
        empty.display = not self.app.session.turns and not self.generating
        speaker = speaker_label("assistant", self.app.personas.name)
        empty.update(f"Say something to {speaker}. F2 picks a persona, /help lists the commands.")

    @property
    def generating(self) -> bool:
        return self._worker is not None

    # ---- input ----------------------------------------------------------------------------------

    async def on_chat_input_submitted(self, event: ChatInput.Submitted) -> None:
        text = event.text.strip()
        if is_command(text):
            try:
                command = parse_command(text)
            except CommandError as exc:
                self.notify(str(exc), severity="error")
                return
            event.chat_input.clear()
            await self.run_command(command)
            return
        if self.generating:
            self.notify(
                "a reply is still being written; press Esc to stop it first", severity="warning"
            )
            return
        event.chat_input.clear()
        if text.startswith("//"):
            text = text[1:]
        await self._add_turn(Turn("user", text))
        await self._start_reply()

    async def on_command_requested(self, message: CommandRequested) -> None:
        await self.run_command(message.command)

    def on_persona_requested(self, message: PersonaRequested) -> None:
        self.switch_persona(message.name)

    async def run_command(self, command: SlashCommand) -> None:
        """Run a parsed slash command; any PersonaError becomes an error notification."""
        try:
            await self._dispatch(command)
        except PersonaError as exc:
            self.notify(str(exc), severity="error")

    async def _dispatch(self, command: SlashCommand) -> None:
        name = command.name
        if name == "persona":
            self.switch_persona(None if command.arg.lower() in ("none", "(none)") else command.arg)
        elif name == "personas":
            self.action_pick_persona()
        elif name == "new":
            await self.action_new_conversation()
        elif name == "retry":
            await self.action_retry()
        elif name == "undo":
            await self.undo()
        elif name == "set":
            field, value = parse_setting(*command.args)
            self.app.config = replace(
                self.app.config, **{field: value}
            )  # ConfigError when out of range
            self._refresh_status()
            self.notify(f"{command.args[0]} = {value}")
        elif name == "export":
            from persona.tui.export import export_conversation

            path = export_conversation(
                command.arg, self.app.session.turns, self.app.session.conversation_id
            )
            self.notify(f"saved the conversation to {path}")
        elif name == "conversations":
            self.action_conversations()
        elif name == "help":
            self.action_help()
        elif name == "quit":
            await self.app.action_quit()

    # ---- persona --------------------------------------------------------------------------------

    def switch_persona(self, name: str | None) -> None:
        """The next reply comes from `name`; the history stays. Errors become notifications."""
        try:
            self.app.personas.select(name)
        except PersonaError as exc:
            self.notify(str(exc), severity="error")
            return
        self._refresh_status()
        self._refresh_empty()
        who = name or "the model's own voice (no persona)"
        later = " (after this reply)" if self.generating else ""
        self.notify(f"next replies{later}: {who}")

    def action_pick_persona(self) -> None:
        from persona.tui.screens.persona_picker import PersonaPicker

        try:
            personas = self.app.library.list_personas()
        except PersonaError as exc:
            self.notify(str(exc), severity="error")
            return

        def picked(choice: PersonaChoice | None) -> None:
            if choice is not None:
                self.switch_persona(choice.name)

        self.app.push_screen(PersonaPicker(personas, self.app.personas.name), picked)

    # ---- conversations --------------------------------------------------------------------------

    def action_conversations(self) -> None:
        from persona.tui.screens.conversations import ConversationsScreen

        try:
            conversations = self.app.library.list_conversations()
        except PersonaError as exc:
            self.notify(str(exc), severity="error")
            return

        async def chosen(conversation_id: int | None) -> None:
            if conversation_id is not None:
                await self.open_conversation(conversation_id)

        self.app.push_screen(
            ConversationsScreen(conversations, self.app.session.conversation_id), chosen
        )

    async def open_conversation(self, conversation_id: int) -> None:
        await self.stop_reply()
        try:
            self.app.session.save()
            self.app.session.resume(conversation_id)
        except PersonaError as exc:
            self.notify(str(exc), severity="error")
            return
        last = self.app.session.last_persona()
        if last is not None and last != self.app.personas.name:
            self.switch_persona(last)
        await self._rebuild()
        self.notify(f"conversation {conversation_id}: {len(self.app.session.turns)} messages")

    async def action_new_conversation(self) -> None:
        await self.stop_reply()
        try:
            self.app.session.save()
        except PersonaError as exc:
            self.notify(f"{exc} (the last conversation is not fully saved)", severity="error")
        self.app.session.start_new()
        await self._rebuild()
        self.notify("new conversation")

    async def _rebuild(self) -> None:
        messages = self.query_one("#messages", VerticalScroll)
        await messages.query(MessageBubble).remove()
        bubbles = [
            MessageBubble(t.role, t.content, t.persona, cut_short=t.cut_short)
            for t in self.app.session.turns
        ]
        if bubbles:
            await messages.mount_all(bubbles)
        messages.scroll_end(animate=False)
        self._refresh_empty()

    def action_help(self) -> None:
        from persona.tui.screens.help import HelpScreen

        self.app.push_screen(HelpScreen())

    # ---- retry / undo ---------------------------------------------------------------------------

    async def action_retry(self) -> None:
        if self.generating:
            self.notify(
                "a reply is still being written; press Esc to stop it first", severity="warning"
            )
            return
        session = self.app.session
        if not session.turns:
            self.notify("nothing to retry yet: send a message first", severity="warning")
            return
        try:
            dropped = session.drop_last_reply()
        except PersonaError as exc:
            self.notify(str(exc), severity="error")
            return
        if dropped is not None:
            await self.query(MessageBubble).last().remove()
        await self._start_reply()

    async def undo(self) -> None:
        if self.generating:
            self.notify(
                "a reply is still being written; press Esc to stop it first", severity="warning"
            )
            return
        removed = self.app.session.undo()  # PersonaError reaches run_command
        if not removed:
            self.notify("nothing to undo", severity="warning")
            return
        bubbles = list(self.query(MessageBubble))
        for bubble in bubbles[len(bubbles) - len(removed) :]:
            await bubble.remove()
        self._refresh_empty()
        self.notify(f"removed the last {'exchange' if len(removed) == 2 else 'message'}")

    # ---- generation -----------------------------------------------------------------------------

    async def _add_turn(self, turn: Turn) -> None:
        await self.query_one("#messages", VerticalScroll).mount(
            MessageBubble(turn.role, turn.content, turn.persona, cut_short=turn.cut_short)
        )
        self._refresh_empty()
        try:
            self.app.session.add(turn)
        except PersonaError as exc:
            self.notify(f"{exc} (kept here; saving again with the next message)", severity="error")

    async def _start_reply(self) -> None:
        personas = self.app.personas
        bubble = MessageBubble("assistant", "", personas.name)
        messages = self.query_one("#messages", VerticalScroll)
        await messages.mount(bubble)
        messages.scroll_end(animate=False)
        self._cancel = threading.Event()
        self.query_one(StatusBar).state = "writing…"
        self._worker = self._generate(
            self.app.session.history(),
            personas.prompt,
            personas.name,
            self.app.config,
            bubble,
            self._cancel,
        )
        self._refresh_empty()

    @work(thread=True, exclusive=True, group="reply", exit_on_error=False)
    def _generate(
        self,
        history: list[Any],
        prompt: Any,
        persona: str | None,
        config: Any,
        bubble: MessageBubble,
        cancel: threading.Event,
    ) -> None:
        engine = self.app.engine
        pieces: list[str] = []
        error: str | None = None
        try:
            for piece in engine.stream(history, prompt, config, cancel=cancel):
                pieces.append(piece)
                self._buffer_piece(bubble, piece, engine.last.tokens_per_second)
        except PersonaError as exc:
            error = str(exc)
        except Exception as exc:  # a bug in generation must not take the conversation with it
            first_line = (str(exc).strip().splitlines() or [""])[0][:200]
            error = f"generation failed ({type(exc).__name__}: {first_line}); the conversation so far is saved"
        stats = engine.last
        reason = (
            "error"
            if error
            else (
                "cancelled"
                if cancel.is_set() and stats.finish_reason != "stop"
                else stats.finish_reason
            )
        )
        outcome = ReplyOutcome(
            "".join(pieces),
            persona,
            reason or "stop",
            stats.new_tokens,
            stats.tokens_per_second,
            error,
        )
        try:
            self.app.call_from_thread(self._reply_done, bubble, outcome)
        except RuntimeError:  # the app is already gone
            pass

    def _buffer_piece(self, bubble: MessageBubble, piece: str, tokens_per_second: float) -> None:
        """Worker thread: keep the piece, and ask the screen to show the buffer unless it was asked already."""
        with self._pending_lock:
            self._pending.append(piece)
            self._pending_bubble = bubble
            self._pending_speed = tokens_per_second or self._pending_speed
            if self._flush_posted:
                return
            self._flush_posted = True
        self.post_message(self.PiecesReady())  # thread-safe, and does not wait

    def _take_pending(self, *, reopen: bool = True) -> tuple[MessageBubble | None, str, float]:
        """(the bubble the text belongs to, the text not shown yet, the latest speed)."""
        with self._pending_lock:
            bubble, text, speed = self._pending_bubble, "".join(self._pending), self._pending_speed
            self._pending.clear()
            if reopen:  # the reply is over: the next one starts from nothing
                self._flush_posted, self._pending_speed = False, 0.0
        return bubble, text, speed

    async def on_chat_screen_pieces_ready(self, message: PiecesReady) -> None:
        async with self._bubble_lock:
            bubble, text, speed = self._take_pending(reopen=False)
            if text and bubble is not None and bubble.is_mounted:
                await bubble.write(text)
            if speed:
                self.query_one(StatusBar).tokens_per_second = speed
        # at most one redraw per FLUSH_INTERVAL: the next request may come once it has passed
        self.set_timer(FLUSH_INTERVAL, self._reopen_flush)

    def _reopen_flush(self) -> None:
        with self._pending_lock:
            waiting = bool(self._pending) and self._flush_posted
            if not waiting:
                self._flush_posted = False
        if waiting:
            self.post_message(self.PiecesReady())

    async def _reply_done(self, bubble: MessageBubble, outcome: ReplyOutcome) -> None:
        async with self._bubble_lock:
            await self._finish_reply(bubble, outcome)

    async def _finish_reply(self, bubble: MessageBubble, outcome: ReplyOutcome) -> None:
        _, text, _ = self._take_pending()  # what the screen had not shown yet
        if text:
            await bubble.write(text)
        self._worker, self._cancel = None, None
        status = self.query_one(StatusBar)
        status.state = {"cancelled": "stopped", "length": "max tokens", "error": "failed"}.get(
            outcome.finish_reason, "ready"
        )
        if outcome.tokens_per_second:
            status.tokens_per_second = outcome.tokens_per_second
        if outcome.error:
            self.notify(outcome.error, severity="error")
        if not outcome.text.strip():
            await bubble.remove()
            if outcome.finish_reason == "cancelled":
                self.notify("stopped before the first word; nothing was kept", severity="warning")
            self._refresh_empty()
            return
        await bubble.finish(
            cut_short=outcome.cut_short,
            note="max tokens" if outcome.finish_reason == "length" else "",
        )
        await self._save(
            Turn(
                "assistant",
                outcome.text,
                outcome.persona,
                outcome.new_tokens or None,
                outcome.cut_short,
            )
        )

    async def _save(self, turn: Turn) -> None:
        try:
            self.app.session.add(turn)
        except PersonaError as exc:
            self.notify(f"{exc} (kept here; saving again with the next message)", severity="error")

    def action_cancel_reply(self) -> None:
        if self._cancel is not None:
            self._cancel.set()

    async def stop_reply(self) -> None:
        """Cancel a reply being written and wait until it is saved (marked cut short)."""
        worker = self._worker
        if worker is None:
            return
        self.action_cancel_reply()
        await worker.wait()
