"""Where a chat's replies come from: a runner (persona.engine.contract), who may speak through it,
and what the status line and the library call the model.

`local_backend` (persona.tui.local) runs the chat's own model; `remote_backend` asks a server.
Either way the chat screen speaks only the runner's contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from persona.engine.contract import Runner
from persona.engine.remote import RemoteRunner
from persona.tui.personas import PersonaSource
from persona.tui.remote_personas import RemotePersonas


@dataclass
class ChatBackend:
    runner: Runner
    personas: PersonaSource
    model_label: str  # the status line's name for the model
    fingerprint: str  # recorded with each conversation the chat saves

    def close(self) -> None:
        self.runner.close()


def remote_backend(runner: RemoteRunner, library: Any, label: str | None = None) -> ChatBackend:
    """Replies from `runner`'s server; its personas by name, their defaults from `library` where
    it has them. `label` names the server on the status line (default: its URL). Raises the
    server's one-line error when it cannot list its models."""
    personas = RemotePersonas(runner, library)
    label = f"{personas.base_id} @ {label or runner.base_url}"
    return ChatBackend(runner, personas, label, f"remote:{personas.base_id}")
