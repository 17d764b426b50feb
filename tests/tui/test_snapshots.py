"""SVG snapshots of the chat screen, the persona picker and the conversations screen.

Deterministic by construction: a scripted engine instead of sampling, dates pinned, a clock that
ticks once per piece (the speed shown is always the scripted one), a fixed terminal size, no
cursor blink. Update after a deliberate change with `--snapshot-update`.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

import pytest
from textual.pilot import Pilot

from persona.tui.widgets.chat_input import ChatInput
from tests.tui.fakes import FixedTimeLibrary, ScriptedEngine
from tests.tui.helpers import local_app, ready, send

SIZE = (100, 32)

PIRATE_REPLY = (
    "Arr, the sea be the finest thing there is! **Wide open water**, a good wind in the sails, "
    "and no landlubber tellin' ye where to go."
)
POET_REPLY = "The sea, the sea, so wide and free,\nit sings its salt old song to me."


@pytest.fixture
def scripted(tiny: Any) -> ScriptedEngine:
    return ScriptedEngine(
        fingerprint=tiny.fingerprint, replies={"pirate": [PIRATE_REPLY], "poet": [POET_REPLY]}
    )


@pytest.fixture(autouse=True)
def steady_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reply's clock advances one scripted token's time each time it is read."""
    ticks = itertools.count()
    seconds_per_token = 1 / ScriptedEngine.tokens_per_second
    clock = SimpleNamespace(monotonic=lambda: next(ticks) * seconds_per_token)
    monkeypatch.setattr("persona.tui.reply.time", clock)


async def _still(pilot: Pilot[Any]) -> None:
    """No blinking cursor and no toasts: the screenshot must not depend on timing."""
    for text_area in pilot.app.query(ChatInput):
        text_area.cursor_blink = False
    pilot.app.clear_notifications()
    await pilot.pause()


async def _switched_conversation(pilot: Pilot[Any]) -> None:
    await send(pilot, "What is the best thing about the sea?")
    await send(pilot, "/persona poet")
    await send(pilot, "And what do you think?")
    await _still(pilot)


def test_chat_screen_after_switching_persona(
    snap_compare: Any, scripted: ScriptedEngine, two_personas: Any
) -> None:
    app = local_app(scripted, FixedTimeLibrary(two_personas), persona="pirate")
    assert snap_compare(app, terminal_size=SIZE, run_before=_switched_conversation)


def test_persona_picker(snap_compare: Any, scripted: ScriptedEngine, two_personas: Any) -> None:
    async def open_picker(pilot: Pilot[Any]) -> None:
        await ready(pilot)
        await _still(pilot)
        await pilot.press("f2")
        await pilot.pause()

    app = local_app(scripted, FixedTimeLibrary(two_personas), persona="poet")
    assert snap_compare(app, terminal_size=SIZE, run_before=open_picker)


def test_conversations_screen(
    snap_compare: Any, scripted: ScriptedEngine, two_personas: Any
) -> None:
    async def two_conversations(pilot: Pilot[Any]) -> None:
        await send(pilot, "What is the best thing about the sea?")
        await send(pilot, "/persona poet")
        await send(pilot, "And what do you think?")
        await send(pilot, "/new")
        await send(pilot, "Write me a short poem")
        await _still(pilot)
        await pilot.press("f3")
        await pilot.pause()

    app = local_app(scripted, FixedTimeLibrary(two_personas), persona="pirate")
    assert snap_compare(app, terminal_size=SIZE, run_before=two_conversations)
