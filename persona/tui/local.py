"""A chat on a model of its own: a `SerialRunner` over the `ChatEngine`, one reply at a time, its
per-persona caches kept between turns; the speakers are the local library's personas."""

from __future__ import annotations

from typing import Any

from persona.engine.chat import ChatEngine
from persona.engine.serial import SerialRunner
from persona.tui.backend import ChatBackend
from persona.tui.personas import PersonaSelector


def local_backend(engine: ChatEngine, library: Any) -> ChatBackend:
    loaded = engine.loaded
    personas = PersonaSelector(library, loaded.fingerprint, engine.check_persona)
    return ChatBackend(
        SerialRunner(engine), personas, str(loaded.model_id), str(loaded.fingerprint)
    )
