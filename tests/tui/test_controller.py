"""ChatController without a screen: what typed text and commands do to the chat, and what the
user is told, through a fake view that records it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from persona.tui.controller import ChatController, Chosen, Severity
from persona.tui.local import local_backend
from persona.tui.personas import Speaker
from persona.tui.session import Turn
from persona.tui.state import ChatState
from tests.tui.fakes import ScriptedEngine


class RecordingView:
    """A ChatView that keeps what it was asked to show; a reply 'starts' by ending at once."""

    def __init__(self) -> None:
        self.notices: list[tuple[str, str]] = []
        self.shown: list[str] = []
        self.cleared = 0
        self.replies = 0
        self.picker: tuple[list[Speaker], str | None, Chosen] | None = None

    def notify(self, message: str, *, severity: Severity = "information") -> None:
        self.notices.append((severity, message))

    def refresh_status(self) -> None:
        pass

    def clear_input(self) -> None:
        self.cleared += 1

    async def show(self, turns: Sequence[Turn]) -> None:
        self.shown = [turn.content for turn in turns]

    async def add(self, turn: Turn) -> None:
        self.shown.append(turn.content)

    async def drop_last(self, count: int = 1) -> None:
        del self.shown[-count:]

    async def start_reply(self) -> None:
        self.replies += 1

    async def stop_reply(self) -> None:
        pass

    def open_picker(self, speakers: list[Speaker], current: str | None, then: Chosen) -> None:
        self.picker = (speakers, current, then)

    def open_conversations(
        self, conversations: list[Any], current: int | None, then: Chosen
    ) -> None:
        pass

    def open_help(self) -> None:
        pass

    async def quit(self) -> None:
        pass


@pytest.fixture
def chat(two_personas: Any, tiny: Any) -> tuple[ChatController, RecordingView]:
    two_personas.set_defaults("poet", {"greeting": "Hark, a visitor."})
    engine = ScriptedEngine(fingerprint=tiny.fingerprint)
    state = ChatState(local_backend(engine, two_personas), two_personas)
    view = RecordingView()
    return ChatController(state, view), view


def test_a_bad_command_is_one_error_and_the_input_stays(chat: Any) -> None:
    controller, view = chat
    asyncio.run(controller.submit("/persona"))
    assert view.notices == [("error", "usage: /persona NAME")] and view.cleared == 0


def test_a_message_is_shown_saved_and_answered(chat: Any) -> None:
    controller, view = chat
    asyncio.run(controller.submit("ahoy"))
    assert view.shown == ["ahoy"] and view.cleared == 1 and view.replies == 1
    assert controller.state.session.turns[0].message_id is not None  # saved at once


def test_a_message_while_a_reply_is_written_is_refused_as_a_warning(chat: Any) -> None:
    controller, view = chat
    asyncio.run(controller.submit("ahoy"))
    controller.state.begin_reply()
    asyncio.run(controller.submit("are you there?"))
    assert view.notices[-1][0] == "warning" and "Esc" in view.notices[-1][1]
    assert view.shown == ["ahoy"] and view.cleared == 1


def test_switching_before_anything_was_said_swaps_the_greeting(chat: Any) -> None:
    controller, view = chat
    asyncio.run(controller.submit("/persona poet"))
    assert view.shown == ["Hark, a visitor."]
    assert view.notices == [("information", "next replies: poet")]
    asyncio.run(controller.submit("/persona pirate"))
    assert view.shown == []  # the pirate has no greeting


def test_the_picker_lists_the_personas_and_switches_to_the_one_picked(chat: Any) -> None:
    controller, view = chat
    asyncio.run(controller.submit("/personas"))
    speakers, current, then = view.picker
    assert [s.name for s in speakers] == ["pirate", "poet"] and current is None
    asyncio.run(then(Speaker("pirate")))
    assert controller.state.personas.name == "pirate"


def test_an_unknown_persona_is_an_error_and_nothing_changes(chat: Any) -> None:
    controller, view = chat
    asyncio.run(controller.submit("/persona pirate"))
    asyncio.run(controller.submit("/persona nobody"))
    assert view.notices[-1][0] == "error" and "'nobody'" in view.notices[-1][1]
    assert controller.state.personas.name == "pirate"
