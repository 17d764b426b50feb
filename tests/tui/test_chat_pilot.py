"""The chat client driven by Pilot on the tiny model: what a user sees, and what ends up in the library."""

from __future__ import annotations

from typing import Any

import pytest

from persona.engine.config import GenerationConfig
from tests.tui.fakes import PausingEngine
from tests.tui.helpers import (
    bubbles,
    input_text,
    local_app,
    notifications,
    ready,
    send,
    speakers,
    status_line,
    type_text,
    wait_for,
    wait_idle,
)

GREEDY = {"temperature": 0, "max_new_tokens": 12}  # as if given with --temperature, --max-tokens
SIZE = (100, 40)


def saved(library: Any, conversation_id: int | None) -> list[tuple[str, str | None, bool]]:
    """(role, persona, cut short) of each message the library holds for the conversation."""
    assert conversation_id is not None, "the conversation was never saved"
    return [(m.role, m.persona, m.cut_short) for m in library.get_messages(conversation_id)]


async def test_send_streams_a_reply_and_saves_both_messages(engine: Any, library: Any) -> None:
    app = local_app(engine, library, overrides=GREEDY)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "hello there")
        shown = bubbles(app)
        assert [(label.split(" · ")[0], role) for label, role, _ in shown] == [
            ("you", "user"),
            ("assistant", "assistant"),
        ]
        assert shown[0][2] == "hello there"
        expected = engine.reply(
            [{"role": "user", "content": "hello there"}], None, GenerationConfig(**GREEDY)
        )
        assert shown[1][2] == expected and expected.strip()
        assert (
            shown[1][0] == "assistant · max tokens"
        )  # 12 tokens were not enough: the label says why it stopped
        assert input_text(app) == ""
        assert "persona: (none)" in status_line(app)
        assert "tok/s" in status_line(app) and "– tok/s" not in status_line(app)
    assert saved(library, app.session.conversation_id) == [
        ("user", None, False),
        ("assistant", None, True),
    ]
    assert library.list_conversations()[0].title == "hello there"


async def test_pieces_appear_while_the_reply_is_still_being_written(
    engine: Any, library: Any
) -> None:
    pausing = PausingEngine(engine)
    app = local_app(pausing, library, overrides=GREEDY)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "hello", wait=False)
        await wait_for(pilot, pausing.first_piece)
        label, role, partial = bubbles(app)[-1]
        assert role == "assistant" and partial, (
            "the first piece is not on screen while the reply is paused"
        )
        assert "writing" in status_line(app)
        await type_text(pilot, "typing works")  # the UI is not blocked by the worker
        assert input_text(app) == "typing works"
        pausing.release.set()
        await wait_idle(pilot)
        assert len(bubbles(app)[-1][2]) > len(partial)


async def test_switching_persona_mid_conversation_labels_each_reply(
    engine: Any, two_personas: Any
) -> None:
    app = local_app(engine, two_personas, persona="pirate", overrides=GREEDY)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "who are you")
        await send(pilot, "/persona poet")
        assert "persona: poet" in status_line(app)
        await send(pilot, "and now")
        await send(pilot, "/persona none")
        await send(pilot, "plain")
        labels = speakers(app)
        assert labels == ["you", "pirate", "you", "poet", "you", "assistant"]
    personas = [
        p for role, p, _ in saved(two_personas, app.session.conversation_id) if role == "assistant"
    ]
    assert personas == ["pirate", "poet", None]


async def test_picker_lists_personas_and_switches(engine: Any, two_personas: Any) -> None:
    app = local_app(engine, two_personas, overrides=GREEDY)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2")
        await pilot.pause()
        from textual.widgets import OptionList

        options = app.screen.query_one(OptionList)
        texts = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
        assert [t.lstrip("● ").split()[0] for t in texts] == ["(none)", "pirate", "poet"]
        assert "answers in rhyme" in texts[2]
        await pilot.press("down", "down", "enter")
        await pilot.pause()
        assert "persona: poet" in status_line(app)
        await send(pilot, "hi")
        assert speakers(app)[-1] == "poet"


async def test_picker_with_no_personas_offers_the_model_voice(engine: Any, library: Any) -> None:
    app = local_app(engine, library, overrides=GREEDY)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2")
        await pilot.pause()
        from textual.widgets import Label, OptionList

        assert app.screen.query_one(OptionList).option_count == 1
        assert any("no personas yet" in str(label.render()) for label in app.screen.query(Label))
        await pilot.press("enter")
        await pilot.pause()
        assert "persona: (none)" in status_line(app)


async def test_escape_stops_the_reply_and_keeps_it_marked_cut_short(
    engine: Any, library: Any
) -> None:
    pausing = PausingEngine(engine)
    app = local_app(pausing, library, overrides=GREEDY)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "tell me a long story", wait=False)
        await wait_for(pilot, pausing.first_piece)
        await pilot.press("escape")
        await wait_idle(pilot)
        label, role, text = bubbles(app)[-1]
        assert role == "assistant" and label.endswith("cut short") and text
        assert "stopped" in status_line(app)
        assert engine.last.finish_reason == "cancelled"
    assert saved(library, app.session.conversation_id) == [
        ("user", None, False),
        ("assistant", None, True),
    ]
    assert library.get_messages(app.session.conversation_id)[-1].content == text


async def test_quitting_during_a_reply_saves_it_cut_short(engine: Any, library: Any) -> None:
    pausing = PausingEngine(engine)
    app = local_app(pausing, library, overrides=GREEDY)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "hello", wait=False)
        await wait_for(pilot, pausing.first_piece)
        await pilot.press("ctrl+q")
        await pilot.pause(0.2)
    assert saved(library, app.session.conversation_id) == [
        ("user", None, False),
        ("assistant", None, True),
    ]


async def test_retry_replaces_the_last_reply(engine: Any, two_personas: Any) -> None:
    app = local_app(engine, two_personas, persona="pirate", overrides=GREEDY)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "hello")
        await send(pilot, "/persona poet")
        await send(pilot, "/retry")
        assert speakers(app) == ["you", "poet"]
    assert saved(two_personas, app.session.conversation_id) == [
        ("user", None, False),
        ("assistant", "poet", True),
    ]


async def test_undo_drops_the_last_exchange(engine: Any, library: Any) -> None:
    app = local_app(engine, library, overrides=GREEDY)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "first")
        await send(pilot, "second")
        await send(pilot, "/undo")
        assert [text for _, role, text in bubbles(app) if role == "user"] == ["first"]
        await send(pilot, "/undo")
        await send(pilot, "/undo")
        assert bubbles(app) == []
        assert ("warning", "nothing to undo") in notifications(app)
    assert library.get_messages(app.session.conversation_id) == []


async def test_resume_shows_the_saved_conversation_and_continues_it(
    engine: Any, two_personas: Any
) -> None:
    first = local_app(engine, two_personas, persona="pirate", overrides=GREEDY)
    async with first.run_test(size=SIZE) as pilot:
        await send(pilot, "ahoy")
    conversation_id = first.session.conversation_id

    resumed = local_app(engine, two_personas, resume="latest", overrides=GREEDY)
    async with resumed.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert speakers(resumed) == ["you", "pirate"]
        assert "persona: pirate" in status_line(resumed)
        await send(pilot, "again")
    assert resumed.session.conversation_id == conversation_id
    assert [m.content for m in two_personas.get_messages(conversation_id) if m.role == "user"] == [
        "ahoy",
        "again",
    ]


async def test_conversations_screen_opens_an_older_conversation(engine: Any, library: Any) -> None:
    app = local_app(engine, library, overrides=GREEDY)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "the first conversation")
        first_id = app.session.conversation_id
        await send(pilot, "/new")
        assert bubbles(app) == []
        await send(pilot, "the second one")
        await pilot.press("f3")
        await pilot.pause()
        await pilot.press("down", "enter")  # newest first: the second row is the first conversation
        await pilot.pause()
        assert app.session.conversation_id == first_id
        assert bubbles(app)[0][2] == "the first conversation"


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("/frobnicate", "unknown command /frobnicate"),
        ("/set temperature hot", "is not a number"),
        ("/set temperature -1", "temperature=-1.0"),
        ("/persona nobody", "no persona named 'nobody'"),
        ("/export notes.txt", "end the path in .md or .json"),
    ],
)
async def test_a_bad_command_is_a_notification_not_a_crash(
    engine: Any, library: Any, command: str, message: str
) -> None:
    app = local_app(engine, library, overrides=GREEDY)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, command)
        errors = [text for severity, text in notifications(app) if severity == "error"]
        assert any(message in text for text in errors), errors
        assert bubbles(app) == []  # nothing was sent to the model
        await send(pilot, "still works")
        assert len(bubbles(app)) == 2


async def test_set_changes_the_generation_settings(engine: Any, library: Any) -> None:
    app = local_app(engine, library, overrides=GREEDY)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "/set max_tokens 3")
        await send(pilot, "/set temperature 0.3")
        assert "temp 0.3" in status_line(app) and "max 3" in status_line(app)
        await send(pilot, "hi")
        assert engine.last.new_tokens <= 3


async def test_export_writes_markdown_and_json(
    engine: Any, two_personas: Any, tmp_path: Any
) -> None:
    import json

    app = local_app(engine, two_personas, persona="poet", overrides=GREEDY)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "hello")
        await send(pilot, f"/export {tmp_path}/chat.md")
        await send(pilot, f"/export {tmp_path}/chat.json")
    assert "**poet**" in (tmp_path / "chat.md").read_text()
    data = json.loads((tmp_path / "chat.json").read_text())
    assert [(m["role"], m["persona"]) for m in data["messages"]] == [
        ("user", None),
        ("assistant", "poet"),
    ]


def test_an_unknown_persona_is_refused_before_the_app_starts(engine: Any, library: Any) -> None:
    from persona.errors import NotFoundError

    with pytest.raises(NotFoundError, match="no persona named 'ghost'"):
        local_app(engine, library, persona="ghost")


def test_the_default_persona_setting_is_used(engine: Any, two_personas: Any) -> None:
    two_personas.set_setting("default_persona", "poet")
    assert local_app(engine, two_personas).personas.name == "poet"
    two_personas.set_setting("default_persona", "deleted-long-ago")
    assert local_app(engine, two_personas).personas.name is None


async def test_command_palette_switches_persona_by_name(engine: Any, two_personas: Any) -> None:
    app = local_app(engine, two_personas, overrides=GREEDY)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"poet")  # fuzzy search: "Persona: poet" is the best match
        await pilot.pause(0.5)
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert "persona: poet" in status_line(app)


async def test_help_lists_the_keys_and_commands(engine: Any, library: Any) -> None:
    from textual.widgets import Markdown

    app = local_app(engine, library, overrides=GREEDY)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "/help")
        shown = app.screen.query_one(Markdown).source
        assert "/persona NAME" in shown and "Ctrl+J" in shown and "Esc" in shown
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is app.chat


async def test_a_too_small_terminal_says_so(engine: Any, library: Any) -> None:
    from textual.widgets import Static

    app = local_app(engine, library, overrides=GREEDY)
    async with app.run_test(size=(30, 8)) as pilot:
        await pilot.pause()
        notice = app.chat.query_one("#too-small", Static)
        assert notice.display and "too small" in str(notice.render())
        await pilot.resize_terminal(100, 30)
        await pilot.pause()
        assert not notice.display


async def test_a_slow_screen_gets_the_reply_in_fewer_larger_pieces_not_a_slower_reply(
    library: Any, monkeypatch: Any
) -> None:
    import asyncio

    from persona.tui.widgets.message_bubble import MessageBubble
    from tests.tui.fakes import ScriptedEngine

    words = [f"word{index}" for index in range(60)]
    scripted = ScriptedEngine(fingerprint=None, replies={None: [" ".join(words)]})
    writes: list[str] = []
    original = MessageBubble.write

    async def slow_write(self: MessageBubble, piece: str) -> None:
        writes.append(piece)
        await asyncio.sleep(0.03)  # a redraw slower than the worker produces pieces
        await original(self, piece)

    monkeypatch.setattr(MessageBubble, "write", slow_write)
    app = local_app(scripted, library, overrides=GREEDY)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "talk to me")
        assert bubbles(app)[-1][2] == " ".join(words)  # nothing lost, nothing out of order
        assert "".join(writes) == " ".join(words)
        assert (
            1 <= len(writes) < len(words) // 2
        )  # pieces gathered while the screen was busy went in together


async def test_keys_run_the_same_commands_as_slash_commands(library: Any) -> None:
    from tests.tui.fakes import ScriptedEngine

    scripted = ScriptedEngine(fingerprint=None, replies={None: ["first answer", "second answer"]})
    pausing = PausingEngine(scripted)
    app = local_app(pausing, library, overrides=GREEDY)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "hello", wait=False)
        await wait_for(pilot, pausing.first_piece)
        await pilot.press("ctrl+r")  # refused while the reply is being written
        assert (
            "warning",
            "a reply is still being written; press Esc to stop it first",
        ) in notifications(app)
        pausing.release.set()
        await wait_idle(pilot)
        assert bubbles(app)[-1][2] == "first answer"
        await pilot.press("ctrl+r")
        await wait_idle(pilot)
        assert [text for _, _, text in bubbles(app)] == ["hello", "second answer"]
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert bubbles(app) == [] and ("information", "new conversation") in notifications(app)
