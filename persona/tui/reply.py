"""One reply, generated on the worker thread: submit it to a runner, pass its pieces on, say how
it ended.

Plain code, no widgets: the chat screen runs `write_reply` in a worker and shows its pieces and
its outcome; tests run it directly. The runner (persona.engine.contract) is the chat's own model
(`SerialRunner`) or a server (`RemoteRunner`): the reply is written the same way either way.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from persona.engine.contract import Request, Runner
from persona.errors import PersonaError, first_line

# what the status bar says once a reply has ended, by finish reason ("ready" for any other)
END_STATES = {"cancelled": "stopped", "length": "max tokens", "error": "failed"}


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


class _Queued:
    """The sink of one reply: the runner's thread puts its events here, the worker takes them."""

    def __init__(self) -> None:
        # a piece; (finish reason, completion tokens) at the end; or the error that ended it
        self.events: queue.Queue[str | tuple[str, int] | PersonaError] = queue.Queue()

    def piece(self, text: str) -> None:
        self.events.put(text)

    def finish(self, reason: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.events.put((reason, completion_tokens))

    def error(self, error: PersonaError) -> None:
        self.events.put(error)


class _Speed:
    """Tokens per second after the first one (the time to the first is waiting, not writing)."""

    def __init__(self) -> None:
        self.first: float | None = None

    def __call__(self, tokens: int) -> float:
        now = time.monotonic()
        if self.first is None:
            self.first = now
        seconds = now - self.first
        return (tokens - 1) / seconds if tokens > 1 and seconds > 0 else 0.0


def write_reply(
    runner: Runner,
    request: Request,
    persona: str | None,
    cancel: threading.Event,
    on_piece: Callable[[str, float], None],
) -> ReplyOutcome:
    """Run `request` on `runner`, handing each piece (and the speed so far) to `on_piece`; never
    raises. Setting `cancel` stops it at the runner's next step; the runner cuts the request's stop
    strings.

    A PersonaError (refused, failed, a server down) is the user's to read, any other exception a
    bug: both end the reply with `finish_reason="error"` and keep the text that came."""
    sink = _Queued()
    pieces: list[str] = []
    speed = _Speed()
    tokens_per_second = 0.0
    try:
        runner.submit(request, sink, cancel)
    except PersonaError as exc:
        return ReplyOutcome("", persona, "error", error=str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug must not take the conversation with it
        return ReplyOutcome("", persona, "error", error=_bug(exc))
    while True:
        event = sink.events.get()
        if isinstance(event, str):
            pieces.append(event)
            tokens_per_second = speed(len(pieces))
            on_piece(event, tokens_per_second)
            continue
        text = "".join(pieces)
        if isinstance(event, PersonaError):
            error = str(event)
            return ReplyOutcome(text, persona, "error", len(pieces), tokens_per_second, error)
        reason, tokens = event
        if tokens:
            tokens_per_second = speed(tokens) or tokens_per_second
        return ReplyOutcome(text, persona, reason or "stop", tokens, tokens_per_second)


def _bug(exc: Exception) -> str:
    return f"generation failed ({type(exc).__name__}: {first_line(exc)}); the conversation so far is saved"
