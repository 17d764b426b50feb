"""Typed messages the chat client's parts send each other."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from persona.tui.commands import SlashCommand


@dataclass
class PersonaChoice:
    """What the persona picker returns: a persona's name, or None for the model's own voice."""

    name: str | None


class CommandRequested(Message):
    """Run a slash command as if it were typed (the command palette sends these)."""

    def __init__(self, command: SlashCommand) -> None:
        super().__init__()
        self.command = command


class PersonaRequested(Message):
    """Switch to this persona (None: no persona) for the next reply."""

    def __init__(self, name: str | None) -> None:
        super().__init__()
        self.name = name
