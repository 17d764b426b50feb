"""PersonaChatApp: the chat client's app. It holds a `ChatState` (where replies come from, the
library, the conversation, the speaker, the settings) and shows it on one `ChatScreen`.

The backend and the library are constructor arguments: the CLI passes the real ones (the chat's
own model, or a server), tests pass a tiny model (or a scripted engine) and a library in a temp dir.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from textual.app import App, SystemCommand
from textual.screen import Screen

from persona.engine.config import GenerationConfig
from persona.errors import PersonaError
from persona.tui.backend import ChatBackend
from persona.tui.commands import SlashCommand
from persona.tui.hangup import HangUpWatch
from persona.tui.messages import CommandRequested, PersonaRequested
from persona.tui.personas import PersonaSource
from persona.tui.screens.chat import ChatScreen
from persona.tui.session import ChatSession, Library
from persona.tui.state import ChatState

HANG_UP_EXIT = 128 + signal.SIGHUP  # the exit status of a process that SIGHUP ended
STOP_REPLY_WAIT_S = 5.0  # on a hang-up, how long the reply being written may take to stop
PALETTE_COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("New conversation", "start a new conversation (Ctrl+N)", "new"),
    ("Retry", "regenerate the last reply (Ctrl+R)", "retry"),
    ("Undo", "drop the last exchange", "undo"),
    ("Pick persona", "open the persona picker (F2)", "personas"),
    ("Conversations", "saved conversations (F3)", "conversations"),
    ("Help: keys and commands", "keys and slash commands (F1)", "help"),
)


class PersonaChatApp(App[None]):
    TITLE = "persona"

    def __init__(
        self,
        backend: ChatBackend,
        library: Library,
        *,
        persona: str | None = None,
        resume: int | Literal["latest"] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        """See `ChatState`: PersonaError (before anything is drawn) for an unknown persona or
        conversation, or a bad override. The app closes `backend` when it ends."""
        super().__init__()
        self._quit_despite_unsaved = False
        self.state = ChatState(
            backend, library, persona=persona, resume=resume, overrides=overrides
        )
        self._hang_up_watch = HangUpWatch(self._hung_up)

    # the state's parts, by the names the rest of the client and its tests use
    @property
    def library(self) -> Library:
        return self.state.library

    @property
    def session(self) -> ChatSession:
        return self.state.session

    @property
    def personas(self) -> PersonaSource:
        return self.state.personas

    @property
    def overrides(self) -> dict[str, Any]:
        return self.state.overrides

    @property
    def config(self) -> GenerationConfig:
        return self.state.config

    def get_default_screen(self) -> Screen[Any]:
        return ChatScreen(self.state)

    @property
    def chat(self) -> ChatScreen:
        return next(screen for screen in self.screen_stack if isinstance(screen, ChatScreen))

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        chat = self.chat
        for title, help_text, name in PALETTE_COMMANDS:
            yield SystemCommand(
                title,
                help_text,
                lambda name=name: chat.post_message(CommandRequested(SlashCommand(name))),
            )
        yield SystemCommand(
            "Persona: (none)",
            "the model's own voice, no soft prompt",
            lambda: chat.post_message(PersonaRequested(None)),
        )
        try:
            personas = self.personas.available()
        except PersonaError:
            personas = []
        for info in personas:
            yield SystemCommand(
                f"Persona: {info.name}",
                info.description or "switch to this persona",
                lambda name=info.name: chat.post_message(PersonaRequested(name)),
            )

    async def action_quit(self) -> None:
        """Stop a reply being written (it is saved, cut short), save anything pending, leave."""
        await self.chat.stop_reply()
        try:
            self.session.save()
        except PersonaError as exc:
            if not self._quit_despite_unsaved:
                self._quit_despite_unsaved = True
                self.notify(
                    f"{exc}; {self.session.unsaved} messages are not saved: /export PATH keeps them, Ctrl+Q again quits",
                    severity="error",
                )
                return
        self.exit()

    def on_mount(self) -> None:
        if not self.is_headless:  # a real terminal, which may go away
            self._hang_up_watch.start(asyncio.get_running_loop())

    def _hung_up(self) -> None:
        self.run_worker(self.hang_up(), group="hang-up", exclusive=True)

    async def hang_up(self) -> None:
        """The terminal went away: stop the reply being written (it is saved, cut short), save
        what is not saved yet, and end the process. Not through Textual's exit: that restores the
        terminal, and writing to a dead one fails in Textual's writer thread and leaves its
        shutdown waiting for it forever. There is nobody left to tell about a failure."""
        try:
            await asyncio.wait_for(self.chat.stop_reply(), STOP_REPLY_WAIT_S)
        except asyncio.TimeoutError:
            pass  # what was saved stays saved
        try:
            self.session.save()
        except PersonaError:
            pass
        self.state.backend.close()
        self.state.library.close()
        os._exit(HANG_UP_EXIT)

    def on_unmount(self) -> None:
        self._hang_up_watch.stop()
        self.state.backend.close()
