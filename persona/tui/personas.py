"""Which persona speaks next: the name, what the runner needs to run it, its own defaults
(`persona set`), and the checks made before switching.

Two sources of speakers stand behind one base class: `PersonaSelector`, the personas of the local
library run on the chat's own model (the request carries the loaded soft prompt), and
`RemotePersonas`, those a server lists at `/v1/models` (the request names one by its model id).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from persona.engine.config import GenerationConfig, PersonaDefaults
from persona.engine.contract import Request
from persona.errors import NotFoundError, PersonaError
from persona.library.settings import DEFAULT_PERSONA_KEY
from persona.prompt.render import Message

NO_PERSONA = "the model's own voice (no persona)"


@dataclass(frozen=True)
class Speaker:
    """A persona the picker lists."""

    name: str
    description: str = ""


class PersonaSource:
    """The active speaker, and how a reply asks for it. Subclasses say who exists (`select`,
    `available`, `default_name`) and what a request carries (`request`)."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.defaults = PersonaDefaults()  # the speaker's own; empty for no persona

    @property
    def greeting(self) -> str | None:
        """What the speaker opens a conversation with (None: it waits for the user)."""
        return self.defaults.greeting

    def select(self, name: str | None) -> None:
        """Make `name` (None: no persona) the speaker; PersonaError if it cannot speak here."""
        raise NotImplementedError

    def available(self) -> list[Speaker]:
        """The personas that may speak, for the picker and the command palette."""
        raise NotImplementedError

    def default_name(self) -> str | None:
        """Who speaks when nobody was named (None: the model's own voice)."""
        raise NotImplementedError

    def request(
        self, messages: Sequence[Message], config: GenerationConfig, stops: list[str]
    ) -> Request:
        """The next reply to `messages`, from the speaker."""
        raise NotImplementedError

    def switch(self, name: str | None, *, replying: bool = False) -> str:
        """`select`, and say what changed: the next replies come from `name` (after the one being
        written, when `replying`)."""
        self.select(name)
        who = name or NO_PERSONA
        return f"next replies{' (after this reply)' if replying else ''}: {who}"

    def select_default(self) -> None:
        """The default speaker when it is usable, else no persona."""
        try:
            name = self.default_name()
        except PersonaError:
            name = None
        self.select_quietly(name)

    def select_quietly(self, name: str | None) -> bool:
        """Try `name`; on any PersonaError fall back to no persona. True when `name` was selected."""
        try:
            self.select(name)
            return True
        except PersonaError:
            self.select(None)
            return False


class PersonaSelector(PersonaSource):
    """The local library's personas, on the chat's own model; a prompt and defaults fetched once
    are kept, so switching back costs nothing."""

    def __init__(
        self, library: Any, fingerprint: Any, check: Callable[[Any], None] | None = None
    ) -> None:
        super().__init__()
        self.library = library
        self.fingerprint = fingerprint
        # refuses a prompt the engine cannot run (ChatEngine.check_persona); else the model check
        self.check = check or (lambda prompt: prompt.check_fits(fingerprint))
        self.prompt: Any = None  # SoftPrompt | None
        self._prompts: dict[str, tuple[Any, PersonaDefaults]] = {}

    def select(self, name: str | None) -> None:
        """Also PersonaError for a persona made for another model, or whose stored defaults no
        longer read."""
        if name is None:
            self.name, self.prompt, self.defaults = None, None, PersonaDefaults()
            return
        cached = self._prompts.get(name)
        if cached is None:
            try:
                prompt = self.library.get_prompt(name)
            except NotFoundError:
                raise NotFoundError(
                    f"there is no persona named {name!r}; `persona list` shows the library, /personas opens the picker"
                ) from None
            self.check(prompt)
            cached = self._prompts[name] = (prompt, self.library.get_defaults(name))
        self.name, (self.prompt, self.defaults) = name, cached

    def available(self) -> list[Speaker]:
        return [Speaker(info.name, info.description) for info in self.library.list_personas()]

    def default_name(self) -> str | None:
        return self.library.get_setting(DEFAULT_PERSONA_KEY)

    def request(
        self, messages: Sequence[Message], config: GenerationConfig, stops: list[str]
    ) -> Request:
        return Request(list(messages), self.prompt, config, stop=stops)
