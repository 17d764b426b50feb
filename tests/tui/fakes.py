"""Test doubles for the chat client: a scripted engine and an engine that pauses mid-reply."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

from persona.engine.chat import GenerationStats

FIXED_TIME = datetime(2025, 3, 14, 9, 26, tzinfo=timezone.utc)


@dataclass
class ScriptedEngine:
    """Replies with written text, word by word, per persona: deterministic screenshots without a model."""

    fingerprint: Any
    replies: dict[str | None, list[str]] = field(default_factory=dict)
    model_id: str = "SmolLM2-135M-Instruct"
    tokens_per_second: float = 42.0
    calls: list[tuple[list[Any], str | None]] = field(default_factory=list)
    configs: list[Any] = field(default_factory=list)  # the GenerationConfig of each call
    closed: int = 0  # replies ended before the end of their text (cancelled, or no longer read)
    hold_after: int | None = None  # after this many words, wait (up to 5 s) until cancelled

    def __post_init__(self) -> None:
        self.loaded = SimpleNamespace(model_id=self.model_id, fingerprint=self.fingerprint)
        self.backend = SimpleNamespace(name="scripted", layout=None)
        self.last = GenerationStats()

    def prepare(self, request: Any) -> tuple[list[int], int]:
        """What SerialRunner calls on submit: the persona check (no tokens to count)."""
        if request.persona is not None:
            self.check_persona(request.persona)
        request.ids = []
        return [], 0

    def run(
        self, request: Any, *, cancel: threading.Event | None = None, **_: Any
    ) -> Iterator[str]:
        return self.stream(request.messages, request.persona, request.config, cancel=cancel)

    def check_persona(self, persona: Any) -> None:
        """As ChatEngine's on persona's own backend: the model check (it runs either kind)."""
        persona.check_fits(self.fingerprint)

    def stream(
        self,
        messages: Sequence[Any],
        persona: Any = None,
        config: Any = None,
        *,
        cancel: threading.Event | None = None,
        **_: Any,
    ) -> Iterator[str]:
        name = persona.name if persona is not None else None
        self.calls.append((list(messages), name))
        self.configs.append(config)
        queue = self.replies.get(name) or ["(no scripted reply)"]
        text = queue.pop(0) if len(queue) > 1 else queue[0]
        words = text.split(" ")
        stats = GenerationStats(new_tokens=0, finish_reason="stop")
        self.last = stats
        for index, word in enumerate(words):
            if cancel is not None and cancel.is_set():
                stats.finish_reason = "cancelled"
                self.closed += 1
                return
            if index == self.hold_after and cancel is not None and cancel.wait(5):
                stats.finish_reason = "cancelled"
                self.closed += 1
                return
            stats.new_tokens += 1
            try:
                yield word if index == 0 else " " + word
            except GeneratorExit:
                self.closed += 1
                raise
        stats.seconds, stats.first_token_seconds = (
            stats.new_tokens / self.tokens_per_second + 0.1,
            0.1,
        )
        stats.new_tokens += 1


class PausingEngine:
    """A real engine whose reply waits after its first visible piece until the user cancels it (or `release`)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.loaded = engine.loaded
        self.backend = engine.backend
        self.first_piece = threading.Event()
        self.release = threading.Event()

    @property
    def last(self) -> GenerationStats:
        return self.engine.last

    def check_persona(self, persona: Any) -> None:
        self.engine.check_persona(persona)

    def prepare(self, request: Any) -> tuple[list[int], int]:
        return self.engine.prepare(request)

    def run(
        self, request: Any, *, cancel: threading.Event | None = None, **_: Any
    ) -> Iterator[str]:
        """The real engine's reply, held after its first visible piece."""
        request.config = replace(request.config, max_new_tokens=200)
        self.engine.prepare(request)  # the ids again, for the longer reply's window
        text = ""
        for piece in self.engine.run(request, cancel=cancel):
            yield piece
            text += piece
            if text.strip() and not self.first_piece.is_set():
                self.first_piece.set()
                while not self.release.is_set() and not (cancel is not None and cancel.is_set()):
                    self.release.wait(0.01)

    def stream(
        self,
        messages: Sequence[Any],
        persona: Any = None,
        config: Any = None,
        *,
        cancel: threading.Event | None = None,
        **kw: Any,
    ) -> Iterator[str]:
        config = replace(config, max_new_tokens=200) if config is not None else config
        text = ""
        for piece in self.engine.stream(messages, persona, config, cancel=cancel, **kw):
            yield piece
            text += piece
            if text.strip() and not self.first_piece.is_set():
                self.first_piece.set()
                while not self.release.is_set() and not (cancel is not None and cancel.is_set()):
                    self.release.wait(0.01)


class FixedTimeLibrary:
    """The real library, with conversation dates pinned so that screenshots do not change."""

    def __init__(self, library: Any) -> None:
        self._library = library

    def __getattr__(self, name: str) -> Any:
        return getattr(self._library, name)

    def list_conversations(self) -> list[Any]:
        return [
            replace(c, created=FIXED_TIME, updated=FIXED_TIME)
            for c in self._library.list_conversations()
        ]
