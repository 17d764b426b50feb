"""A persona's own defaults in the chat: its settings, its stop strings and its greeting, under what
the user gave (flags, /set), observed through the settings the scripted engine receives."""

from __future__ import annotations

from typing import Any

import pytest

from persona.engine.config import GenerationConfig
from tests.tui.fakes import ScriptedEngine
from tests.tui.helpers import bubbles, local_app, notifications, ready, send, status_line

SIZE = (100, 40)
BUILT_IN = GenerationConfig()
PIRATE_GREETING = "Ahoy, matey! What brings ye aboard?"
POET_GREETING = "A verse for you, if you will stay."


@pytest.fixture
def scripted(tiny: Any) -> ScriptedEngine:
    return ScriptedEngine(
        fingerprint=tiny.fingerprint,
        replies={
            "pirate": ["I be an old sea dog, and that be all ye need to know"],
            "poet": ["Roses fall"],
            None: ["Hello."],
        },
    )


@pytest.fixture
def characters(two_personas: Any) -> Any:
    """`pirate` plays hot and short, `poet` cool; neither has a stop string or a greeting yet."""
    two_personas.set_defaults("pirate", {"temperature": 1.2, "max_new_tokens": 40})
    two_personas.set_defaults("poet", {"temperature": 0.3, "top_p": 0.5})
    return two_personas


def settings(config: GenerationConfig) -> tuple[float, float, int]:
    return config.temperature, config.top_p, config.max_new_tokens


async def test_a_persona_replies_with_its_own_settings(
    scripted: ScriptedEngine, characters: Any
) -> None:
    app = local_app(scripted, characters, persona="pirate")
    async with app.run_test(size=SIZE) as pilot:
        assert "temp 1.2 · top_p 0.9 · max 40" in status_line(app)
        await send(pilot, "who are you")
    assert settings(scripted.configs[-1]) == (1.2, BUILT_IN.top_p, 40)


async def test_a_flag_given_wins_over_the_persona_and_the_rest_stay_its_own(
    scripted: ScriptedEngine, characters: Any
) -> None:
    app = local_app(
        scripted, characters, persona="pirate", overrides={"temperature": 0.0, "top_k": None}
    )
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "who are you")
    assert settings(scripted.configs[-1]) == (0.0, BUILT_IN.top_p, 40)
    assert scripted.configs[-1].top_k == BUILT_IN.top_k  # a flag not given (None) is no override


async def test_switching_persona_switches_its_settings_and_keeps_the_users(
    scripted: ScriptedEngine, characters: Any
) -> None:
    app = local_app(scripted, characters, persona="pirate")
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "/set max_tokens 12")
        await send(pilot, "who are you")
        await send(pilot, "/persona poet")
        assert "temp 0.3 · top_p 0.5 · max 12" in status_line(app)
        await send(pilot, "and you")
        await send(pilot, "/persona none")
        await send(pilot, "and the model")
        await send(pilot, "/set temperature 0.8")
        await send(pilot, "/persona pirate")
        await send(pilot, "once more")
    assert [settings(config) for config in scripted.configs] == [
        (1.2, BUILT_IN.top_p, 12),  # pirate's temperature, the user's max tokens
        (0.3, 0.5, 12),  # poet's own
        (BUILT_IN.temperature, BUILT_IN.top_p, 12),  # no persona: the built-in ones
        (0.8, BUILT_IN.top_p, 12),  # the user's temperature now wins over pirate's
    ]


async def test_a_bad_set_changes_nothing(scripted: ScriptedEngine, characters: Any) -> None:
    app = local_app(scripted, characters, persona="pirate")
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "/set top_p 7")
        assert any("top_p=7.0" in text for severity, text in notifications(app))
        await send(pilot, "hi")
    assert settings(scripted.configs[-1]) == (1.2, BUILT_IN.top_p, 40)


async def test_a_stop_string_ends_the_reply_unseen_even_across_pieces(
    scripted: ScriptedEngine, characters: Any
) -> None:
    characters.set_defaults("pirate", {"stop": ["sea dog", "never said"]})
    app = local_app(scripted, characters, persona="pirate")
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "who are you")  # the reply comes as "… old", " sea", " dog,"
        label, _, text = bubbles(app)[-1]
        assert text.rstrip() == "I be an old" and label == "pirate"  # ended, not cut short
        await send(pilot, "/persona poet")
        await send(pilot, "and you")
        assert bubbles(app)[-1][2] == "Roses fall"  # poet has no stop strings
    assert scripted.closed == 1  # generation ended at the stop string, not at the end of the text
    stored = characters.get_messages(app.session.conversation_id)
    assert [(m.content.rstrip(), m.cut_short) for m in stored if m.persona == "pirate"] == [
        ("I be an old", False)
    ]


async def test_the_greeting_opens_the_conversation_and_the_model_sees_it(
    scripted: ScriptedEngine, characters: Any
) -> None:
    characters.set_defaults("pirate", {"greeting": PIRATE_GREETING})
    app = local_app(scripted, characters, persona="pirate")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert bubbles(app) == [("pirate", "assistant", PIRATE_GREETING)]
        await send(pilot, "a ship")
    assert scripted.calls[-1] == (
        [
            {"role": "assistant", "content": PIRATE_GREETING},
            {"role": "user", "content": "a ship"},
        ],
        "pirate",
    )
    stored = characters.get_messages(app.session.conversation_id)
    assert [(m.role, m.persona, m.content) for m in stored][:2] == [
        ("assistant", "pirate", PIRATE_GREETING),
        ("user", None, "a ship"),
    ]
    assert characters.list_conversations()[0].title == "a ship"

    resumed = local_app(scripted, characters, resume="latest")
    async with resumed.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert [text for _, _, text in bubbles(resumed)].count(PIRATE_GREETING) == 1


async def test_a_greeting_alone_is_not_saved(scripted: ScriptedEngine, characters: Any) -> None:
    characters.set_defaults("pirate", {"greeting": PIRATE_GREETING})
    app = local_app(scripted, characters, persona="pirate")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "/retry")
        await send(pilot, "/undo")
        assert bubbles(app) == [("pirate", "assistant", PIRATE_GREETING)]  # refused, both
        await send(pilot, "/new")
        assert bubbles(app) == [("pirate", "assistant", PIRATE_GREETING)]
        await pilot.press("ctrl+q")
        await pilot.pause()
    assert scripted.calls == []
    assert characters.list_conversations() == [] and app.session.conversation_id is None


async def test_switching_persona_before_speaking_swaps_the_greeting(
    scripted: ScriptedEngine, characters: Any
) -> None:
    characters.set_defaults("pirate", {"greeting": PIRATE_GREETING})
    characters.set_defaults("poet", {"greeting": POET_GREETING})
    app = local_app(scripted, characters, persona="pirate")
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "/persona poet")
        assert bubbles(app) == [("poet", "assistant", POET_GREETING)]
        await send(pilot, "/persona none")  # the model's own voice has no greeting
        assert bubbles(app) == []
        await send(pilot, "/persona poet")
        await send(pilot, "hello")
        await send(pilot, "/persona pirate")  # the conversation has started: it stays as it is
        assert [text for _, _, text in bubbles(app)] == [POET_GREETING, "hello", "Roses fall"]
        await send(pilot, "/new")
        assert bubbles(app) == [("pirate", "assistant", PIRATE_GREETING)]
    assert len(characters.list_conversations()) == 1
