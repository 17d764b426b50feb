"""PersonaChatApp: holds the engine, the library, the conversation, the active persona and the
settings the user gave.

A reply's settings are, highest first: what the user gave (the `persona chat` flags given, `/set`),
the speaking persona's own defaults (`persona set`), the built-in ones; switching persona switches
the middle layer and keeps the first. The engine and the library are constructor arguments: the
CLI passes the real ones, tests pass a tiny model (or a scripted engine) and a library in a temp dir.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from textual.app import App, SystemCommand
from textual.screen import Screen

from persona.engine.config import GenerationConfig, generation_config, stop_strings
from persona.errors import PersonaError
from persona.tui.commands import SlashCommand
from persona.tui.messages import CommandRequested, PersonaRequested
from persona.tui.personas import PersonaSelector
from persona.tui.screens.chat import ChatScreen
from persona.tui.session import ChatSession, Library

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
        engine: Any,
        library: Library,
        *,
        persona: str | None = None,
        resume: int | Literal["latest"] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        """`overrides`: GenerationConfig fields the user gave (None: not given). Raise PersonaError
        (before anything is drawn) for an unknown persona or conversation, or a bad override."""
        super().__init__()
        self._quit_despite_unsaved = False
        self.engine = engine
        self.library = library
        self.overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        generation_config(None, **self.overrides)  # ConfigError now, not at the first reply
        self.model_label = str(engine.loaded.model_id)
        self.session = ChatSession(library, str(engine.loaded.fingerprint))
        self.personas = PersonaSelector(library, engine.loaded.fingerprint, engine.check_persona)
        if resume is not None:
            self.session.resume(None if resume == "latest" else resume)
        if persona is not None:
            self.personas.select(persona)
        elif resume is not None and self.session.last_persona() is not None:
            if not self.personas.select_quietly(self.session.last_persona()):
                self.personas.select_default()
        else:
            self.personas.select_default()
        if resume is None:
            self.session.greet(self.personas.greeting, self.personas.name)

    @property
    def config(self) -> GenerationConfig:
        """The next reply's settings: the user's over the speaking persona's over the built-in."""
        return generation_config(self.personas.defaults, **self.overrides)

    @property
    def stops(self) -> list[str]:
        """The stop strings that end the next reply: the speaking persona's."""
        return stop_strings(self.personas.defaults)

    def set_override(self, field: str, value: Any) -> None:
        """The user sets `field` (None: back to the persona's or the built-in value) for the rest
        of the session; ConfigError, and nothing changed, for a value out of range."""
        overrides = {k: v for k, v in {**self.overrides, field: value}.items() if v is not None}
        generation_config(self.personas.defaults, **overrides)
        self.overrides = overrides

    def get_default_screen(self) -> Screen[Any]:
        return ChatScreen()

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
            personas = self.library.list_personas()
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
