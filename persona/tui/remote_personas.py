"""The speakers of a chat whose replies come from a server: the personas it lists at `/v1/models`.

A remote persona is known by name only; the server runs it. Its defaults and greeting are those of
the local library's persona of the same name, where there is one (none otherwise), so a chat
against a server that serves the same library looks and samples the same as a local one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from persona.engine.config import GenerationConfig, PersonaDefaults
from persona.engine.contract import Request
from persona.engine.remote import RemoteRunner
from persona.errors import NotFoundError, PersonaError
from persona.prompt.render import Message
from persona.tui.personas import PersonaSource, Speaker


class RemotePersonas(PersonaSource):
    """The personas `runner`'s server serves. Listing them at construction raises the server's
    one-line error (down, a refused key), so a chat that cannot work does not start."""

    def __init__(self, runner: RemoteRunner, library: Any) -> None:
        super().__init__()
        self.runner = runner
        self.library = library
        self._entries = runner.models()
        self.base_id = next(
            (entry["id"] for entry in self._entries if entry.get("persona") is None),
            self._entries[0]["id"] if self._entries else "default",
        )

    @property
    def model_id(self) -> str:
        """The model id the next request names: the persona's, or the bare model's."""
        return self.name or self.base_id

    def select(self, name: str | None) -> None:
        """Also NotFoundError for a name the server does not list (asked again, in case it was
        added since the chat started)."""
        if name is None:
            self.name, self.defaults = None, PersonaDefaults()
            return
        if name not in self._names():
            self._entries = self.runner.models()
            if name not in self._names():
                raise NotFoundError(
                    f"the server at {self.runner.base_url} has no persona {name!r}; "
                    "/personas lists what it serves"
                )
        self.name, self.defaults = name, self._local_defaults(name)

    def available(self) -> list[Speaker]:
        """What the server lists now (what it listed last, while it cannot be reached)."""
        try:
            self._entries = self.runner.models()
        except PersonaError:
            pass
        return [
            Speaker(entry["id"], str(entry.get("description") or ""))
            for entry in self._entries
            if entry.get("persona") is not None
        ]

    def default_name(self) -> str | None:
        return next((entry["id"] for entry in self._entries if entry.get("default")), None)

    def request(
        self, messages: Sequence[Message], config: GenerationConfig, stops: list[str]
    ) -> Request:
        return Request(list(messages), None, config, stop=stops, model=self.model_id)

    def _names(self) -> set[str]:
        return {entry["id"] for entry in self._entries if entry.get("persona") is not None}

    def _local_defaults(self, name: str) -> PersonaDefaults:
        try:
            return self.library.get_defaults(name)
        except PersonaError:  # not in the local library (or it cannot be read): none
            return PersonaDefaults()
