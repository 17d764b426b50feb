"""Which persona speaks next: the name, its soft prompt, its own defaults (`persona set`), and the
checks made before switching."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from persona.engine.config import PersonaDefaults
from persona.errors import NotFoundError, PersonaError
from persona.library.settings import DEFAULT_PERSONA_KEY


class PersonaSelector:
    """Holds the active persona; a prompt and defaults fetched once are kept, so switching back
    costs nothing."""

    def __init__(
        self, library: Any, fingerprint: Any, check: Callable[[Any], None] | None = None
    ) -> None:
        self.library = library
        self.fingerprint = fingerprint
        # refuses a prompt the engine cannot run (ChatEngine.check_persona); else the model check
        self.check = check or (lambda prompt: prompt.check_fits(fingerprint))
        self.name: str | None = None
        self.prompt: Any = None  # SoftPrompt | None
        self.defaults = PersonaDefaults()  # the speaker's own; empty for no persona
        self._prompts: dict[str, tuple[Any, PersonaDefaults]] = {}

    @property
    def greeting(self) -> str | None:
        """What the speaker opens a conversation with (None: it waits for the user)."""
        return self.defaults.greeting

    def select(self, name: str | None) -> None:
        """Make `name` (None: no persona) the speaker; PersonaError if unknown, made for another
        model, or its stored defaults no longer read."""
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

    def switch(self, name: str | None, *, replying: bool = False) -> str:
        """`select`, and say what changed: the next replies come from `name` (after the one being
        written, when `replying`)."""
        self.select(name)
        who = name or "the model's own voice (no persona)"
        return f"next replies{' (after this reply)' if replying else ''}: {who}"

    def select_default(self) -> None:
        """The library's `default_persona` when it is set and usable, else no persona."""
        try:
            name = self.library.get_setting(DEFAULT_PERSONA_KEY)
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
