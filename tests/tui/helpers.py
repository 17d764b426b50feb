"""Driving the chat client in Pilot tests the way a user would: type, press Enter, wait, read."""

from __future__ import annotations

from typing import Any

from textual.pilot import Pilot
from textual.widgets import Static

from persona.tui.widgets.chat_input import ChatInput
from persona.tui.widgets.message_bubble import MessageBubble
from persona.tui.widgets.status_bar import StatusBar

KEY_NAMES = {
    " ": "space",
    "/": "slash",
    ".": "full_stop",
    "-": "minus",
    "_": "underscore",
    "?": "question_mark",
}


def local_app(engine: Any, library: Any, **kwargs: Any) -> Any:
    """The chat app on `engine` (a ChatEngine, or a fake one) through a SerialRunner."""
    from persona.tui.app import PersonaChatApp
    from persona.tui.local import local_backend

    return PersonaChatApp(local_backend(engine, library), library, **kwargs)


async def ready(pilot: Pilot[Any], rounds: int = 200) -> None:
    """Wait until the chat screen is up and its input has focus."""
    for _ in range(rounds):
        if isinstance(pilot.app.focused, ChatInput):
            return
        await pilot.pause(0.02)
    raise AssertionError("the chat screen never came up")


async def type_text(pilot: Pilot[Any], text: str) -> None:
    await ready(pilot)
    await pilot.click(ChatInput)
    await pilot.press(*[KEY_NAMES.get(char, char) for char in text])


async def send(pilot: Pilot[Any], text: str, *, wait: bool = True) -> None:
    """Type `text` into the input and press Enter; by default wait for the reply to finish."""
    await type_text(pilot, text)
    await pilot.press("enter")
    if wait:
        await wait_idle(pilot)


async def wait_idle(pilot: Pilot[Any], rounds: int = 400) -> None:
    for _ in range(rounds):
        await pilot.pause(0.02)
        if not pilot.app.chat.generating:
            await pilot.pause()
            return
    raise AssertionError("the reply never finished")


def speakers(app: Any) -> list[str]:
    """The speaker of every message on screen, without the `· cut short` mark."""
    return [label.split(" · ")[0] for label, _, _ in bubbles(app)]


def bubbles(app: Any) -> list[tuple[str, str, str]]:
    """(speaker label as shown, role, text) for every message on the chat screen."""
    return [
        (str(bubble.query_one(".speaker", Static).render()), bubble.role, bubble.text)
        for bubble in app.chat.query(MessageBubble)
    ]


def status_line(app: Any) -> str:
    return str(app.chat.query_one(StatusBar).render())


def notifications(app: Any) -> list[tuple[str, str]]:
    """(severity, message) of every notification shown so far."""
    return [(n.severity, n.message) for n in app._notifications]


def input_text(app: Any) -> str:
    return app.chat.query_one(ChatInput).text


async def wait_for(pilot: Pilot[Any], event: Any, rounds: int = 400) -> None:
    """Let the app run until a threading.Event is set (e.g. the engine produced its first piece)."""
    for _ in range(rounds):
        if event.is_set():
            await pilot.pause(0.05)
            return
        await pilot.pause(0.02)
    raise AssertionError("the event never came")
