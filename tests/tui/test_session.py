"""The conversation and its copy in the library: saved as it happens, nothing lost when a write fails."""

from __future__ import annotations

import json
from typing import Any

import pytest

from persona.errors import LibraryError, NotFoundError
from persona.library.conversations import make_title
from persona.tui.export import export_conversation
from persona.tui.personas import PersonaSelector
from persona.tui.reply import ReplyOutcome
from persona.tui.session import ChatSession, Refused, Turn


def rows(library: Any, session: ChatSession) -> list[tuple[str, str, str | None, bool]]:
    assert session.conversation_id is not None
    return [
        (m.role, m.content, m.persona, m.cut_short)
        for m in library.get_messages(session.conversation_id)
    ]


def test_messages_are_saved_as_they_are_added(library: Any) -> None:
    session = ChatSession(library, "fp")
    session.add(Turn("user", "Hello\nthere"))
    session.add(Turn("assistant", "Ahoy", "pirate", token_count=2, cut_short=True))
    assert rows(library, session) == [
        ("user", "Hello\nthere", None, False),
        ("assistant", "Ahoy", "pirate", True),
    ]
    assert library.list_conversations()[0].title == "Hello"


def test_a_failed_write_is_kept_and_saved_with_the_next_message(library: Any) -> None:
    class Flaky:
        fail = True

        def __getattr__(self, name: str) -> Any:
            return getattr(library, name)

        def add_message(self, *args: Any, **kwargs: Any) -> int:
            if self.fail:
                raise LibraryError(
                    "the library is locked by another persona process; close it and try again"
                )
            return library.add_message(*args, **kwargs)

    flaky = Flaky()
    session = ChatSession(flaky, "fp")
    with pytest.raises(LibraryError):
        session.add(Turn("user", "first"))
    assert session.unsaved == 1 and [t.content for t in session.turns] == ["first"]
    flaky.fail = False
    session.add(Turn("assistant", "reply", None))
    assert [content for _, content, _, _ in rows(library, session)] == ["first", "reply"]
    assert session.unsaved == 0


def test_undo_and_retry_remove_messages_from_the_library(library: Any) -> None:
    session = ChatSession(library, "fp")
    for turn in (
        Turn("user", "a"),
        Turn("assistant", "b", "poet"),
        Turn("user", "c"),
        Turn("assistant", "d", "poet"),
    ):
        session.add(turn)
    assert session.drop_last_reply() is not None
    assert [content for _, content, _, _ in rows(library, session)] == ["a", "b", "c"]
    assert [t.content for t in session.undo()] == ["c"]
    assert [t.content for t in session.undo()] == ["b", "a"]
    assert session.undo() == [] and rows(library, session) == []


def test_resume_latest_and_by_id(library: Any) -> None:
    first = ChatSession(library, "fp")
    first.add(Turn("user", "one"))
    second = ChatSession(library, "fp")
    second.add(Turn("user", "two"))
    second.add(Turn("assistant", "reply", "pirate"))
    resumed = ChatSession(library, "fp")
    resumed.resume(None)
    assert resumed.conversation_id == second.conversation_id and resumed.last_persona() == "pirate"
    resumed.resume(first.conversation_id)
    assert [t.content for t in resumed.turns] == ["one"]
    with pytest.raises(NotFoundError, match="no conversation with id 999"):
        resumed.resume(999)


def test_resume_with_nothing_saved_says_so(library: Any) -> None:
    with pytest.raises(NotFoundError, match="no saved conversation to resume"):
        ChatSession(library, "fp").resume(None)


def test_titles_are_the_first_line_shortened() -> None:
    assert make_title("\n  Tell me about ships\nand more") == "Tell me about ships"
    assert len(make_title("x" * 200)) == 60 and make_title("x" * 200).endswith("…")
    assert make_title("   ") == "untitled"


def test_export_markdown_and_json(tmp_path: Any) -> None:
    turns = [Turn("user", "hi"), Turn("assistant", "Arr", "pirate", cut_short=True)]
    markdown = export_conversation(tmp_path / "c.md", turns, 3).read_text()
    assert "**you**" in markdown and "**pirate** *(cut short)*" in markdown and "Arr" in markdown
    data = json.loads(export_conversation(tmp_path / "c.json", turns, 3).read_text())
    assert data["conversation_id"] == 3
    assert data["messages"][1] == {
        "role": "assistant",
        "content": "Arr",
        "persona": "pirate",
        "cut_short": True,
    }


def test_a_message_sent_with_a_double_slash_keeps_one() -> None:
    session = ChatSession(None, "fp")  # type: ignore[arg-type]  # nothing is saved here
    assert session.user_turn("  //etc/hosts is a path ") == Turn("user", "/etc/hosts is a path")
    assert session.user_turn("hello") == Turn("user", "hello")


def test_while_a_reply_is_written_sending_retry_undo_and_opening_wait(library: Any) -> None:
    session = ChatSession(library, "fp")
    session.add(Turn("user", "hi"))
    assert session.begin_reply() == [{"role": "user", "content": "hi"}]
    for attempt in (
        lambda: session.user_turn("again"),
        session.begin_reply,
        session.drop_for_retry,
        session.undo_exchange,
        lambda: session.open(1),
    ):
        with pytest.raises(Refused, match="a reply is still being written; press Esc"):
            attempt()
    assert [t.content for t in session.turns] == ["hi"]  # nothing changed
    session.end_reply(ReplyOutcome("", None, "cancelled"))
    assert not session.replying and session.user_turn("again").content == "again"


def test_a_finished_reply_becomes_a_turn_and_an_empty_one_is_dropped() -> None:
    session = ChatSession(None, "fp")  # type: ignore[arg-type]
    session.begin_reply()
    turn = session.end_reply(ReplyOutcome("Arr", "pirate", "length", new_tokens=3))
    assert turn == Turn("assistant", "Arr", "pirate", 3, cut_short=True)
    assert session.turns == []  # the screen adds it once it is shown
    session.begin_reply()
    assert session.end_reply(ReplyOutcome("  \n", "pirate", "cancelled")) is None


def test_retry_and_undo_say_when_there_is_nothing_to_do(library: Any) -> None:
    session = ChatSession(library, "fp")
    with pytest.raises(Refused, match="nothing to retry yet: send a message first"):
        session.drop_for_retry()
    with pytest.raises(Refused, match="nothing to undo"):
        session.undo_exchange()
    session.add(Turn("user", "a"))
    assert session.drop_for_retry() is None  # no reply yet: the message stays, a reply follows
    session.add(Turn("assistant", "b", "poet"))
    assert session.drop_for_retry() == Turn("assistant", "b", "poet")
    assert [t.content for t in session.undo_exchange()] == ["a"]


def test_opening_another_conversation_saves_this_one_first(library: Any) -> None:
    older = ChatSession(library, "fp")
    older.add(Turn("user", "older"))
    session = ChatSession(library, "fp")
    session.turns.append(Turn("user", "not saved yet"))
    session.open(older.conversation_id)  # type: ignore[arg-type]
    assert [t.content for t in session.turns] == ["older"]
    assert len(library.list_conversations()) == 2


def test_switching_persona_says_who_speaks_next(two_personas: Any, tiny: Any) -> None:
    personas = PersonaSelector(two_personas, tiny.fingerprint)
    assert personas.switch("poet") == "next replies: poet" and personas.name == "poet"
    assert personas.switch(None) == "next replies: the model's own voice (no persona)"
    assert personas.switch(None, replying=True) == (
        "next replies (after this reply): the model's own voice (no persona)"
    )
    with pytest.raises(NotFoundError, match="no persona named 'ghost'"):
        personas.switch("ghost")


def test_a_greeting_opens_the_conversation_but_is_saved_only_with_the_user_s_first_message(
    library: Any,
) -> None:
    session = ChatSession(library, "fp")
    assert session.greet("Ahoy!", "pirate") and not session.started
    session.save()
    assert session.conversation_id is None and library.list_conversations() == []
    assert session.greet("A verse?", "poet")  # another persona before anything was said
    assert session.turns == [Turn("assistant", "A verse?", "poet")]
    session.add(Turn("user", "hello"))
    assert rows(library, session) == [
        ("assistant", "A verse?", "poet", False),
        ("user", "hello", None, False),
    ]
    assert library.list_conversations()[0].title == "hello"
    assert not session.greet("Ahoy!", "pirate")  # started: it stays as it is
    assert session.history()[0] == {"role": "assistant", "content": "A verse?"}


def test_with_only_a_greeting_there_is_nothing_to_retry_or_undo(library: Any) -> None:
    session = ChatSession(library, "fp")
    session.greet("Ahoy!", "pirate")
    with pytest.raises(Refused, match="nothing to retry yet"):
        session.drop_for_retry()
    with pytest.raises(Refused, match="nothing to undo"):
        session.undo_exchange()
    assert [t.content for t in session.turns] == ["Ahoy!"]


def test_the_selector_holds_the_speaker_s_defaults(two_personas: Any, tiny: Any) -> None:
    two_personas.set_defaults("poet", {"temperature": 0.3, "greeting": "A verse?"})
    personas = PersonaSelector(two_personas, tiny.fingerprint)
    personas.select("poet")
    assert personas.defaults.temperature == 0.3 and personas.greeting == "A verse?"
    personas.select("pirate")
    assert personas.defaults.sampling() == {} and personas.greeting is None
    personas.select(None)
    assert personas.defaults.sampling() == {} and personas.greeting is None
