"""One reply, generated on the worker thread: stream it through the engine, say how it ended.

Plain code, no widgets: the chat screen runs `write_reply` in a worker and shows its pieces and
its outcome; tests run it directly on a scripted engine.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import Any, Protocol

from persona.engine.stops import StopScanner
from persona.errors import PersonaError, first_line
from persona.prompt.render import Message

# what the status bar says once a reply has ended, by finish reason ("ready" for any other)
END_STATES = {"cancelled": "stopped", "length": "max tokens", "error": "failed"}


class ReplyEngine(Protocol):
    """The part of `ChatEngine` a reply needs: a streamed reply and the stats of the last one."""

    last: Any  # GenerationStats

    def stream(
        self,
        messages: Sequence[Message],
        persona: Any = None,
        config: Any = None,
        *,
        cancel: threading.Event | None = None,
    ) -> Any: ...


@dataclass
class ReplyOutcome:
    text: str
    persona: str | None
    finish_reason: str  # stop | length | cancelled | error
    new_tokens: int = 0
    tokens_per_second: float = 0.0
    error: str | None = None

    @property
    def cut_short(self) -> bool:
        return self.finish_reason != "stop"

    @property
    def end_state(self) -> str:
        return END_STATES.get(self.finish_reason, "ready")

    @property
    def note(self) -> str:
        """Why a cut-short reply is short, shown next to its speaker ("": the default `cut short`)."""
        return "max tokens" if self.finish_reason == "length" else ""


def write_reply(
    engine: ReplyEngine,
    history: list[Message],
    prompt: Any,
    persona: str | None,
    config: Any,
    cancel: threading.Event,
    on_piece: Callable[[str, float], None],
    *,
    stops: Sequence[str] = (),
) -> ReplyOutcome:
    """Stream a reply, handing each piece (and the speed so far) to `on_piece`; never raises.

    The reply ends before the first of `stops` (the persona's stop strings), which is never shown.
    A PersonaError is the user's to read; any other exception is a bug in generation, which must
    not take the conversation with it: both end the reply with `finish_reason="error"`.
    """
    pieces: list[str] = []
    scanner = StopScanner(list(stops))
    error: str | None = None

    def hand_over(text: str) -> None:
        if text:
            pieces.append(text)
            on_piece(text, engine.last.tokens_per_second)

    try:
        with closing(engine.stream(history, prompt, config, cancel=cancel)) as stream:
            for piece in stream:
                hand_over(scanner.push(piece))
                if scanner.stopped:
                    break  # closing the stream ends generation here
    except PersonaError as exc:
        error = str(exc)
    except Exception as exc:
        error = (
            f"generation failed ({type(exc).__name__}: {first_line(exc)}); "
            "the conversation so far is saved"
        )
    hand_over(scanner.flush())  # text held while it could have begun a stop string
    stats = engine.last
    if error:
        reason = "error"
    elif scanner.stopped:
        reason = "stop"
    elif cancel.is_set() and stats.finish_reason != "stop":
        reason = "cancelled"
    else:
        reason = stats.finish_reason or "stop"
    return ReplyOutcome(
        "".join(pieces), persona, reason, stats.new_tokens, stats.tokens_per_second, error
    )
