"""One reply on the worker thread, through a runner (here a SerialRunner over a scripted engine):
its pieces in order, and how it ended (stop, cancel, error)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from persona.engine.chat import GenerationStats
from persona.engine.config import GenerationConfig
from persona.engine.contract import Request
from persona.engine.serial import SerialRunner
from persona.errors import ModelError
from persona.tui.reply import ReplyOutcome, write_reply
from tests.tui.fakes import ScriptedEngine

HISTORY = [{"role": "user", "content": "ahoy"}]


def reply(
    engine: Any,
    cancel: threading.Event | None = None,
    on_piece: Any = lambda *_: None,
    *,
    persona: str | None = None,
    stops: list[str] | None = None,
) -> ReplyOutcome:
    """`write_reply` of HISTORY on a SerialRunner over `engine`."""
    runner = SerialRunner(engine)
    try:
        request = Request(HISTORY, None, GenerationConfig(), stop=stops or [])
        return write_reply(runner, request, persona, cancel or threading.Event(), on_piece)
    finally:
        runner.close()


class FailingEngine(ScriptedEngine):
    """Yields two pieces, then raises `error`."""

    def __init__(self, error: Exception) -> None:
        super().__init__(fingerprint=None)
        self.error = error

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
    outcome = reply(engine, on_piece=lambda p, _: pieces.append(p))
    assert pieces == ["fair", " winds", " to", " you"]
    assert outcome.text == "fair winds to you" and outcome.finish_reason == "stop"
    assert not outcome.cut_short and outcome.end_state == "ready" and outcome.note == ""
    assert engine.calls == [(HISTORY, None)]
    assert outcome.new_tokens == 5  # the engine's count (the end-of-turn token included)


def test_a_cancelled_reply_keeps_what_came_and_is_cut_short() -> None:
    engine = ScriptedEngine(fingerprint=None, replies={None: ["one two three four"]}, hold_after=2)
    cancel = threading.Event()

    def stop_after_two(piece: str, _: float) -> None:
        if piece == " two":
            cancel.set()

    outcome = reply(engine, cancel, stop_after_two, persona="pirate")
    assert outcome.text == "one two" and outcome.persona == "pirate"
    assert outcome.finish_reason == "cancelled" and outcome.cut_short
    assert outcome.end_state == "stopped"


def test_a_persona_error_is_the_message_and_the_text_so_far_is_kept() -> None:
    engine = FailingEngine(ModelError("the model ran out of memory; try a shorter conversation"))
    outcome = reply(engine)
    assert outcome.finish_reason == "error" and outcome.end_state == "failed"
    assert outcome.error == "the model ran out of memory; try a shorter conversation"
    assert outcome.text == "Arr, I" and outcome.cut_short


def test_a_bug_in_generation_becomes_one_line_not_a_crash() -> None:
    engine = FailingEngine(IndexError("index 7 is out of bounds\n  at the bottom of a stack"))
    outcome = reply(engine)
    assert outcome.error == "IndexError: index 7 is out of bounds"  # the runner's one line
    assert outcome.text == "Arr, I"


def test_a_reply_that_hit_the_token_limit_says_so() -> None:
    class LengthEngine(ScriptedEngine):
        def stream(self, *args: Any, **kwargs: Any) -> Iterator[str]:
            yield from super().stream(*args, **kwargs)
            self.last.finish_reason = "length"

    engine = LengthEngine(fingerprint=None, replies={None: ["and then"]})
    outcome = reply(engine)
    assert outcome.finish_reason == "length" and outcome.cut_short
    assert outcome.end_state == "max tokens" and outcome.note == "max tokens"


def test_a_stop_string_ends_the_reply_before_it_even_split_across_pieces() -> None:
    engine = ScriptedEngine(fingerprint=None, replies={None: ["fair winds Hal: to you"]})
    pieces: list[str] = []
    outcome = reply(engine, on_piece=lambda p, _: pieces.append(p), stops=["winds Hal:"])
    assert "".join(pieces) == outcome.text == "fair "
    assert outcome.finish_reason == "stop" and not outcome.cut_short
    assert engine.closed == 1  # generation was ended there, not run to the end


def test_text_held_back_as_a_possible_stop_string_comes_out_when_it_is_not_one() -> None:
    engine = ScriptedEngine(fingerprint=None, replies={None: ["farewell Ha"]})
    pieces: list[str] = []
    outcome = reply(engine, on_piece=lambda p, _: pieces.append(p), stops=["Hal:"])
    assert pieces == ["farewell", " ", "Ha"]  # " Ha" could have begun "Hal:" until the end
    assert outcome.text == "farewell Ha" and outcome.finish_reason == "stop"
