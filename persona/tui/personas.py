"""Which persona speaks next: the name, its soft prompt, and the checks made before switching."""

from __future__ import annotations

from typing import Any

from persona.errors import NotFoundError, PersonaError

DEFAULT_PERSONA_SETTING = "default_persona"


class PersonaSelector:
    """Holds the active persona; prompts fetched once are kept, so switching back costs nothing."""

    def __init__(self, library: Any, fingerprint: Any) -> None:
        self.library = library
        self.fingerprint = fingerprint
        self.name: str | None = None
        self.prompt: Any = None  # SoftPrompt | None
        self._prompts: dict[str, Any] = {}

    def select(self, name: str | None) -> None:
        """Make `name` (None: no persona) the speaker; PersonaError if unknown or made for another model."""
        if name is None:
            self.name, self.prompt = None, None
            return
        prompt = self._prompts.get(name)
        if prompt is None:
            try:
                prompt = self.library.get_prompt(name)
            except NotFoundError:
                raise NotFoundError(
                    f"there is no persona named {name!r}; `persona list` shows the library, /personas opens the picker"
                ) from None
            prompt.check_fits(self.fingerprint)
            self._prompts[name] = prompt
        self.name, self.prompt = name, prompt

    def switch(self, name: str | None, *, replying: bool = False) -> str:
        """`select`, and say what changed: the next replies come from `name` (after the one being
        written, when `replying`)."""
        self.select(name)
        who = name or "the model's own voice (no persona)"
        return f"next replies{' (after this reply)' if replying else ''}: {who}"

    def select_default(self) -> None:
        """The library's `default_persona` when it is set and usable, else no persona."""
        try:
            name = self.library.get_setting(DEFAULT_PERSONA_SETTING)
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
