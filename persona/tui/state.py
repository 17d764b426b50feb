"""What a chat holds: where replies come from, the library, the conversation, the speaker and the
settings the user gave. Plain code: the app and its screen read and change it; tests drive it.

A reply's settings are, highest first: what the user gave (the `persona chat` flags given, `/set`),
the speaking persona's own defaults (`persona set`), the built-in ones; switching persona switches
the middle layer and keeps the first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from persona.engine.config import GenerationConfig, generation_config, stop_strings
from persona.engine.contract import Request
from persona.tui.backend import ChatBackend
from persona.tui.personas import PersonaSource
from persona.tui.session import ChatSession, Library


class ChatState:
    def __init__(
        self,
        backend: ChatBackend,
        library: Library,
        *,
        persona: str | None = None,
        resume: int | Literal["latest"] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        """`overrides`: GenerationConfig fields the user gave (None: not given). Raise PersonaError
        for an unknown persona or conversation, or a bad override."""
        self.backend = backend
        self.library = library
        self.overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        generation_config(None, **self.overrides)  # ConfigError now, not at the first reply
        self.session = ChatSession(library, backend.fingerprint)
        self.personas: PersonaSource = backend.personas
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
    def model_label(self) -> str:
        return self.backend.model_label

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

    def begin_reply(self) -> Request:
        """A reply starts (the session refuses while another is written): what the runner runs."""
        history = self.session.begin_reply()
        return self.personas.request(history, self.config, self.stops)
