"""What the chat does when the user types, picks or presses something: plain code over a
`ChatState` and a `ChatView` (the chat screen, or a fake in tests).

The controller decides; the view only shows. Every action goes through one edge, `shown`: a
refusal becomes a warning, any other PersonaError an error, both one line in the chat.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, Protocol

from persona.errors import PersonaError
from persona.tui.commands import (
    CommandError,
    SlashCommand,
    is_command,
    parse_command,
    parse_setting,
    run_command,
)
from persona.tui.export import export_conversation
from persona.tui.personas import Speaker
from persona.tui.session import Refused, Turn
from persona.tui.state import ChatState

Severity = Literal["information", "warning", "error"]
Chosen = Callable[[Any], Awaitable[None]]  # what a picker calls with the choice (None: none made)


class ChatView(Protocol):
    """What the controller asks of the screen."""

    def notify(self, message: str, *, severity: Severity = "information") -> None: ...
    def refresh_status(self) -> None: ...
    def clear_input(self) -> None: ...
    async def show(self, turns: Sequence[Turn]) -> None: ...
    async def add(self, turn: Turn) -> None: ...
    async def drop_last(self, count: int = 1) -> None: ...
    async def start_reply(self) -> None: ...
    async def stop_reply(self) -> None: ...
    def open_picker(self, speakers: list[Speaker], current: str | None, then: Chosen) -> None: ...
    def open_conversations(
        self, conversations: list[Any], current: int | None, then: Chosen
    ) -> None: ...
    def open_help(self) -> None: ...
    async def quit(self) -> None: ...


class ChatController:
    """The chat's commands (`commands.ChatActions`), and what typed text does."""

    def __init__(self, state: ChatState, view: ChatView) -> None:
        self.state = state
        self.view = view

    async def submit(self, text: str) -> None:
        """Typed text: a slash command, or a message that a reply answers. The input is cleared
        once it is taken; what is refused stays there for the user to fix."""
        if is_command(text):
            try:
                command = parse_command(text)
            except CommandError as exc:
                self.view.notify(str(exc), severity="error")
                return
            self.view.clear_input()
            await self.run(command)
            return
        try:
            turn = self.state.session.user_turn(text)
        except Refused as exc:
            self.view.notify(str(exc), severity="warning")
            return
        self.view.clear_input()
        await self.view.add(turn)
        self.keep(turn)
        await self.shown(self.view.start_reply())

    async def run(self, command: SlashCommand) -> None:
        """Run a parsed slash command; what it refuses or fails at becomes a notification."""
        await self.shown(run_command(self, command))

    async def shown(self, action: Awaitable[None]) -> None:
        """The chat's edge: a refusal is a warning, any other PersonaError an error."""
        try:
            await action
        except Refused as exc:
            self.view.notify(str(exc), severity="warning")
        except PersonaError as exc:
            self.view.notify(str(exc), severity="error")

    def keep(self, turn: Turn) -> None:
        """Add a finished message to the session; if the library refuses, it is kept in memory."""
        try:
            self.state.session.add(turn)
        except PersonaError as exc:
            self.view.notify(
                f"{exc} (kept here; saving again with the next message)", severity="error"
            )

    # ---- the commands (ChatActions) -------------------------------------------------------------

    async def switch_persona(self, name: str | None) -> None:
        """The next reply comes from `name`, with its defaults; the history stays (a conversation
        not started yet opens with `name`'s greeting instead)."""
        state = self.state
        notice = state.personas.switch(name, replying=state.session.replying)
        if state.session.greet(state.personas.greeting, state.personas.name):
            await self.view.show(state.session.turns)
        self.view.refresh_status()
        self.view.notify(notice)

    async def pick_persona(self) -> None:
        async def picked(choice: Any) -> None:
            if choice is not None:
                await self.shown(self.switch_persona(choice.name))

        personas = self.state.personas
        self.view.open_picker(personas.available(), personas.name, picked)

    async def show_conversations(self) -> None:
        async def chosen(conversation_id: int | None) -> None:
            if conversation_id is not None:
                await self.shown(self.open_conversation(conversation_id))

        conversations = self.state.library.list_conversations()
        self.view.open_conversations(conversations, self.state.session.conversation_id, chosen)

    async def open_conversation(self, conversation_id: int) -> None:
        await self.view.stop_reply()
        session = self.state.session
        session.open(conversation_id)
        last = session.last_persona()
        if last is not None and last != self.state.personas.name:
            await self.shown(self.switch_persona(last))
        await self.view.show(session.turns)
        self.view.refresh_status()
        self.view.notify(f"conversation {conversation_id}: {len(session.turns)} messages")

    async def new_conversation(self) -> None:
        await self.view.stop_reply()
        session, personas = self.state.session, self.state.personas
        try:
            session.save()
        except PersonaError as exc:
            self.view.notify(f"{exc} (the last conversation is not fully saved)", severity="error")
        session.start_new()
        session.greet(personas.greeting, personas.name)
        await self.view.show(session.turns)
        self.view.refresh_status()
        self.view.notify("new conversation")

    async def retry(self) -> None:
        if self.state.session.drop_for_retry() is not None:
            await self.view.drop_last()
        await self.view.start_reply()

    async def undo(self) -> None:
        removed = self.state.session.undo_exchange()
        await self.view.drop_last(len(removed))
        self.view.refresh_status()
        self.view.notify(f"removed the last {'exchange' if len(removed) == 2 else 'message'}")

    async def change_setting(self, key: str, value: str) -> None:
        field_name, parsed = parse_setting(key, value)
        self.state.set_override(field_name, parsed)  # ConfigError: out of range
        self.view.refresh_status()
        self.view.notify(f"{key} = {parsed}")

    async def export(self, path: str) -> None:
        session = self.state.session
        saved_to = export_conversation(path, session.turns, session.conversation_id)
        self.view.notify(f"saved the conversation to {saved_to}")

    async def show_help(self) -> None:
        self.view.open_help()

    async def quit(self) -> None:
        await self.view.quit()
