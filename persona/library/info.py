"""Plain records the library hands out: no SQLAlchemy, no torch, safe to print or dump as JSON."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    if hasattr(value, "__dataclass_fields__"):
        return _record_dict(value)
    return value


def _record_dict(record: Any) -> dict[str, Any]:
    """Like dataclasses.asdict, without its deep copies (ten times faster for a 10,000-row list)."""
    return {f.name: _jsonable(getattr(record, f.name)) for f in fields(record)}


@dataclass
class VersionInfo:
    """One trained (or imported) soft prompt of a persona; the tensor itself stays in the library."""

    version: int
    num_virtual_tokens: int
    hidden_size: int
    dtype: str
    sha256: str
    model_id: str
    fingerprint: str  # str(Fingerprint), "" when unknown
    fingerprint_json: str  # Fingerprint.to_json(), "" when unknown
    init: str
    training: dict[str, Any] | None
    metrics: dict[str, Any] | None
    created: datetime
    active: bool = False
    kind: str = "soft"  # soft | deep (persona.prompt.deep)

    def to_dict(self) -> dict[str, Any]:
        return _record_dict(self)


@dataclass
class PersonaInfo:
    """A persona and its active version; `versions` is filled by `get_persona` only."""

    name: str
    description: str
    tags: list[str]
    created: datetime
    updated: datetime
    active_version: int
    num_virtual_tokens: int
    hidden_size: int
    model_id: str
    fingerprint: str
    metrics: dict[str, Any] | None
    versions: list[VersionInfo] = field(default_factory=list)
    # what `persona set` stored: PersonaDefaults.to_dict(), only the settings that are set
    defaults: dict[str, Any] = field(default_factory=dict)
    kind: str = "soft"  # the active version's: soft | deep

    def to_dict(self) -> dict[str, Any]:
        return _record_dict(self)


@dataclass
class ConversationInfo:
    id: int
    title: str
    created: datetime
    updated: datetime
    model_fingerprint: str
    message_count: int
    personas: list[str]  # the persona names that spoke in it, in order of first appearance

    def to_dict(self) -> dict[str, Any]:
        return _record_dict(self)


@dataclass
class MessageInfo:
    id: int
    conversation_id: int
    role: str  # user | assistant | system
    content: str
    persona: str | None  # the persona's name when the message was written
    created: datetime
    token_count: int | None
    cut_short: bool  # generation was cancelled or hit the length limit

    def to_dict(self) -> dict[str, Any]:
        return _record_dict(self)


def prompt_shape(record: Any) -> str:
    """A prompt's shape as persona prints it: N x D, and `deep` for keys and values at every layer
    (D is `?` for a deep prompt of unknown model). `record`: a SoftPrompt, PersonaInfo or VersionInfo."""
    shape = f"{record.num_virtual_tokens}x{record.hidden_size or '?'}"
    return f"{shape} deep" if record.kind == "deep" else shape
