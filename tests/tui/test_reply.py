"""One reply on the worker thread: its pieces in order, and how it ended (stop, cancel, error)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from persona.engine.chat import GenerationStats
from persona.errors import ModelError
from persona.tui.reply import write_reply
from tests.tui.fakes import ScriptedEngine

HISTORY = [{"role": "user", "content": "ahoy"}]


class FailingEngine:
    """Yields two pieces, then raises `error`."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.last = GenerationStats()

    def stream(
        self, messages: Any, persona: Any = None, config: Any = None, **_: Any
    ) -> Iterator[str]:
        self.last = GenerationStats(new_tokens=2)
        yield "Arr"
        yield ", I"
        raise self.error


def test_pieces_go_out_in_order_and_the_outcome_holds_the_whole_reply() -> None:
    engine = ScriptedEngine(fingerprint=None, replies={None: ["fair winds to you"]})
    pieces: list[str] = []
    outcome = write_reply(
        engine, HISTORY, None, None, None, threading.Event(), lambda p, _: pieces.append(p)
    )
    assert pieces == ["fair", " winds", " to", " you"]
    assert outcome.text == "fair winds to you" and outcome.finish_reason == "stop"
    assert not outcome.cut_short and outcome.end_state == "ready" and outcome.note == ""
    assert engine.calls == [(HISTORY, None)]


def test_a_cancelled_reply_keeps_what_came_and_is_cut_short() -> None:
    engine = ScriptedEngine(fingerprint=None, replies={None: ["one two three four"]})
    cancel = threading.Event()

    def stop_after_two(piece: str, _: float) -> None:
        if piece == " two":
            cancel.set()

    outcome = write_reply(engine, HISTORY, None, "pirate", None, cancel, stop_after_two)
    assert outcome.text == "one two" and outcome.persona == "pirate"
    assert outcome.finish_reason == "cancelled" and outcome.cut_short
    assert outcome.end_state == "stopped"


def test_a_persona_error_is_the_message_and_the_text_so_far_is_kept() -> None:
    engine = FailingEngine(ModelError("the model ran out of memory; try a shorter conversation"))
    outcome = write_reply(engine, HISTORY, None, None, None, threading.Event(), lambda *_: None)
    assert outcome.finish_reason == "error" and outcome.end_state == "failed"
    assert outcome.error == "the model ran out of memory; try a shorter conversation"
    assert outcome.text == "Arr, I" and outcome.cut_short


def test_a_bug_in_generation_becomes_one_line_not_a_crash() -> None:
    engine = FailingEngine(IndexError("index 7 is out of bounds\n  at the bottom of a stack"))
    outcome = write_reply(engine, HISTORY, None, None, None, threading.Event(), lambda *_: None)
    assert outcome.error == (
        "generation failed (IndexError: index 7 is out of bounds); the conversation so far is saved"
    )
    assert outcome.text == "Arr, I"


def test_a_reply_that_hit_the_token_limit_says_so() -> None:
    class LengthEngine(ScriptedEngine):
        def stream(self, *args: Any, **kwargs: Any) -> Iterator[str]:
            yield from super().stream(*args, **kwargs)
            self.last.finish_reason = "length"

    engine = LengthEngine(fingerprint=None, replies={None: ["and then"]})
    outcome = write_reply(engine, HISTORY, None, None, None, threading.Event(), lambda *_: None)
    assert outcome.finish_reason == "length" and outcome.cut_short
    assert outcome.end_state == "max tokens" and outcome.note == "max tokens"


def test_a_stop_string_ends_the_reply_before_it_even_split_across_pieces() -> None:
    engine = ScriptedEngine(fingerprint=None, replies={None: ["fair winds Hal: to you"]})
    pieces: list[str] = []
    outcome = write_reply(
        engine,
        HISTORY,
        None,
        None,
        None,
        threading.Event(),
        lambda p, _: pieces.append(p),
        stops=["winds Hal:"],
    )
    assert "".join(pieces) == outcome.text == "fair "
    assert outcome.finish_reason == "stop" and not outcome.cut_short
    assert engine.closed == 1  # generation was ended, not read to the end


def test_text_held_back_as_a_possible_stop_string_comes_out_when_it_is_not_one() -> None:
    engine = ScriptedEngine(fingerprint=None, replies={None: ["farewell Ha"]})
    pieces: list[str] = []
    outcome = write_reply(
        engine,
        HISTORY,
        None,
        None,
        None,
        threading.Event(),
        lambda p, _: pieces.append(p),
        stops=["Hal:"],
    )
    assert pieces == ["farewell", " ", "Ha"]  # " Ha" could have begun "Hal:" until the end
    assert outcome.text == "farewell Ha" and outcome.finish_reason == "stop"
