"""Slash commands: `/persona NAME`, `/set temperature 0.3`, ... parsed into plain records.

Parsing is separate from doing, so the grammar is tested without a terminal; the chat screen
runs the parsed command.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from persona.errors import ConfigError


class CommandError(ConfigError):
    """A slash command that does not exist or has a bad argument."""


@dataclass(frozen=True)
class CommandSpec:
    name: str
    usage: str
    help: str
    min_args: int = 0
    max_args: int = 0


COMMANDS: dict[str, CommandSpec] = {
    spec.name: spec
    for spec in (
        CommandSpec(
            "persona",
            "/persona NAME",
            "switch persona for the next reply (`none`: the model's own voice)",
            1,
            1,
        ),
        CommandSpec("personas", "/personas", "open the persona picker"),
        CommandSpec("new", "/new", "start a new conversation"),
        CommandSpec("retry", "/retry", "regenerate the last reply (with the current persona)"),
        CommandSpec("undo", "/undo", "drop the last exchange (your message and its reply)"),
        CommandSpec(
            "set",
            "/set temperature|top_p|top_k|max_tokens|seed VALUE",
            "change a generation setting",
            2,
            2,
        ),
        CommandSpec(
            "export",
            "/export PATH",
            "save this conversation as Markdown (.md) or JSON (.json)",
            1,
            1,
        ),
        CommandSpec("conversations", "/conversations", "list saved conversations and open one"),
        CommandSpec("help", "/help", "show the keys and commands"),
        CommandSpec("quit", "/quit", "leave (the conversation is already saved)"),
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
