"""Slash-command parsing: what is accepted, and the message a user gets for what is not."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from persona.errors import PersonaError
from persona.tui.commands import (
    COMMANDS,
    ChatActions,
    CommandError,
    SlashCommand,
    is_command,
    parse_command,
    parse_setting,
    run_command,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/persona pirate", SlashCommand("persona", ("pirate",))),
        ("  /persona old sea dog ", SlashCommand("persona", ("old sea dog",))),
        ('/persona "old sea dog"', SlashCommand("persona", ("old sea dog",))),
        ("/PERSONAS", SlashCommand("personas")),
        ("/new", SlashCommand("new")),
        ("/retry", SlashCommand("retry")),
        ("/undo", SlashCommand("undo")),
        ("/set temperature 0.3", SlashCommand("set", ("temperature", "0.3"))),
        ("/export ~/chat.md", SlashCommand("export", ("~/chat.md",))),
        ("/help", SlashCommand("help")),
    ],
)
def test_commands_parse(text: str, expected: SlashCommand) -> None:
    assert parse_command(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("/dance", "unknown command /dance; type /help"),
        ("/", "an empty command"),
        ("/persona", "usage: /persona NAME"),
        ("/new now", "usage: /new"),
        ("/set temperature", "usage: /set"),
        ("/set warmth 3", "unknown setting 'warmth'"),
        ("/set max_tokens many", "max_tokens='many' is not a whole number"),
        ("/set top_p high", "top_p='high' is not a number"),
        ('/export "unclosed', "check the quotes"),
    ],
)
def test_bad_commands_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(CommandError, match=message.replace("(", r"\(")) as caught:
        parse_command(text)
    assert isinstance(caught.value, PersonaError)
    assert "\n" not in str(caught.value)


def test_double_slash_is_a_message_not_a_command() -> None:
    assert is_command("/help") and is_command("  /help")
    assert not is_command("//etc/passwd is a path") and not is_command("hello /help")


def test_settings_map_to_generation_config_fields() -> None:
    assert parse_setting("max_tokens", "64") == ("max_new_tokens", 64)
    assert parse_setting("temperature", "0") == ("temperature", 0.0)
    assert parse_setting("seed", "none") == ("seed", None)


class RecordingChat:
    """A ChatActions that writes down what it was asked to do."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        async def record(*args: object) -> None:
            self.calls.append((name, args))

        return record


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/persona old sea dog", ("switch_persona", ("old sea dog",))),
        ("/persona none", ("switch_persona", (None,))),
        ("/persona (None)", ("switch_persona", (None,))),
        ("/personas", ("pick_persona", ())),
        ("/new", ("new_conversation", ())),
        ("/retry", ("retry", ())),
        ("/undo", ("undo", ())),
        ("/set top_p 0.5", ("change_setting", ("top_p", "0.5"))),
        ("/export chat.md", ("export", ("chat.md",))),
        ("/conversations", ("show_conversations", ())),
        ("/help", ("show_help", ())),
        ("/quit", ("quit", ())),
    ],
)
async def test_each_command_runs_its_own_handler(text: str, expected: tuple[str, Any]) -> None:
    chat = RecordingChat()
    await run_command(chat, parse_command(text))
    assert chat.calls == [expected]


def test_every_handler_is_an_action_the_chat_controller_has() -> None:
    from persona.tui.controller import ChatController

    actions = {name for name in vars(ChatActions) if not name.startswith("_")}
    assert actions <= set(dir(ChatController))
    chat = RecordingChat()
    for spec in COMMANDS.values():
        asyncio.run(spec.run(chat, ("x",) * spec.max_args))
    assert {name for name, _ in chat.calls} == actions  # each action is reachable by a command
