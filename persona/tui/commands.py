"""Slash commands: `/persona NAME`, `/set temperature 0.3`, ... parsed into plain records.

Parsing is separate from doing, so the grammar is tested without a terminal. Each command's spec
names the handler that runs it against `ChatActions` (the `ChatController`, or a fake in tests);
the chat screen's keys and the command palette run commands too, so each action has one path.
"""

from __future__ import annotations

import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from persona.errors import ConfigError


class CommandError(ConfigError):
    """A slash command that does not exist or has a bad argument."""


class ChatActions(Protocol):
    """What slash commands do; `persona.tui.controller.ChatController` implements it."""

    async def switch_persona(self, name: str | None) -> None: ...
    async def pick_persona(self) -> None: ...
    async def new_conversation(self) -> None: ...
    async def retry(self) -> None: ...
    async def undo(self) -> None: ...
    async def change_setting(self, key: str, value: str) -> None: ...
    async def export(self, path: str) -> None: ...
    async def show_conversations(self) -> None: ...
    async def show_help(self) -> None: ...
    async def quit(self) -> None: ...


NO_PERSONA_NAMES = ("none", "(none)")  # `/persona none`: the model's own voice

Handler = Callable[[ChatActions, tuple[str, ...]], Awaitable[None]]


def _persona(chat: ChatActions, args: tuple[str, ...]) -> Awaitable[None]:
    return chat.switch_persona(None if args[0].lower() in NO_PERSONA_NAMES else args[0])


@dataclass(frozen=True)
class CommandSpec:
    name: str
    usage: str
    help: str
    run: Handler  # what the command does, given its arguments (already checked against the spec)
    min_args: int = 0
    max_args: int = 0


COMMANDS: dict[str, CommandSpec] = {
    spec.name: spec
    for spec in (
        CommandSpec(
            "persona",
            "/persona NAME",
            "switch persona for the next reply (`none`: the model's own voice)",
            _persona,
            1,
            1,
        ),
        CommandSpec(
            "personas",
            "/personas",
            "open the persona picker",
            lambda chat, _: chat.pick_persona(),
        ),
        CommandSpec(
            "new",
            "/new",
            "start a new conversation",
            lambda chat, _: chat.new_conversation(),
        ),
        CommandSpec(
            "retry",
            "/retry",
            "regenerate the last reply (with the current persona)",
            lambda chat, _: chat.retry(),
        ),
        CommandSpec(
            "undo",
            "/undo",
            "drop the last exchange (your message and its reply)",
            lambda chat, _: chat.undo(),
        ),
        CommandSpec(
            "set",
            "/set temperature|top_p|top_k|max_tokens|seed|strength VALUE",
            "change a generation setting",
            lambda chat, args: chat.change_setting(*args),
            2,
            2,
        ),
        CommandSpec(
            "strength",
            "/strength S",
            "persona strength: 1 as trained, above 1 stronger (as /set strength S)",
            lambda chat, args: chat.change_setting("strength", *args),
            1,
            1,
        ),
        CommandSpec(
            "export",
            "/export PATH",
            "save this conversation as Markdown (.md) or JSON (.json)",
            lambda chat, args: chat.export(args[0]),
            1,
            1,
        ),
        CommandSpec(
            "conversations",
            "/conversations",
            "list saved conversations and open one",
            lambda chat, _: chat.show_conversations(),
        ),
        CommandSpec(
            "help", "/help", "show the keys and commands", lambda chat, _: chat.show_help()
        ),
        CommandSpec(
            "quit",
            "/quit",
            "leave (the conversation is already saved)",
            lambda chat, _: chat.quit(),
        ),
    )
}

# `/set` names -> GenerationConfig fields, with the type each value is parsed as.
SETTINGS: dict[str, tuple[str, type]] = {
    "temperature": ("temperature", float),
    "top_p": ("top_p", float),
    "top_k": ("top_k", int),
    "max_tokens": ("max_new_tokens", int),
    "max_new_tokens": ("max_new_tokens", int),
    "repetition_penalty": ("repetition_penalty", float),
    "seed": ("seed", int),
    "strength": ("strength", float),
}


@dataclass(frozen=True)
class SlashCommand:
    name: str
    args: tuple[str, ...] = ()

    @property
    def arg(self) -> str:
        return self.args[0] if self.args else ""


def is_command(text: str) -> bool:
    """Text typed into the input is a command when it starts with one `/` (`//` sends a literal `/`)."""
    stripped = text.lstrip()
    return stripped.startswith("/") and not stripped.startswith("//")


def parse_command(text: str) -> SlashCommand:
    """Parse `/name args...`; raise CommandError naming the problem and the right usage."""
    stripped = text.strip()
    if not is_command(stripped):
        raise CommandError(f"{stripped[:40]!r} is not a command; commands start with /, try /help")
    try:
        words = shlex.split(stripped[1:])
    except ValueError as exc:
        raise CommandError(f"cannot read {stripped[:40]!r} ({exc}); check the quotes") from None
    if not words:
        raise CommandError("an empty command; type /help for the list")
    name, args = words[0].lower(), tuple(words[1:])
    spec = COMMANDS.get(name)
    if spec is None:
        raise CommandError(f"unknown command /{name}; type /help for the list")
    if name == "persona" and len(args) > 1:
        args = (" ".join(args),)  # persona names may hold spaces: `/persona old sailor`
    if not spec.min_args <= len(args) <= spec.max_args:
        raise CommandError(f"usage: {spec.usage}")
    if name == "set":
        parse_setting(args[0], args[1])
    return SlashCommand(name, args)


def parse_setting(key: str, value: str) -> tuple[str, int | float | None]:
    """(GenerationConfig field, parsed value) for `/set KEY VALUE`; range checks are the config's."""
    entry = SETTINGS.get(key.lower())
    if entry is None:
        known = ", ".join(name for name in SETTINGS if name != "max_new_tokens")
        raise CommandError(f"unknown setting {key!r}; use one of {known}")
    field, kind = entry
    if field == "seed" and value.lower() in ("none", "off", "random"):
        return field, None
    try:
        return field, kind(value)
    except ValueError:
        wanted = "a whole number" if kind is int else "a number"
        raise CommandError(f"{key}={value!r} is not {wanted}") from None


def help_rows() -> list[tuple[str, str]]:
    """(usage, what it does) for every command, in the order /help shows them."""
    return [(spec.usage, spec.help) for spec in COMMANDS.values()]


async def run_command(chat: ChatActions, command: SlashCommand) -> None:
    """Do a parsed command; its handler's PersonaError reaches the caller (the screen's edge)."""
    await COMMANDS[command.name].run(chat, command.args)
