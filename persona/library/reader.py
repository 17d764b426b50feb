"""Every read (personas, versions, prompts, conversations, messages) in plain SQL over sqlite3.

Why not the ORM here: importing SQLAlchemy alone takes 0.3-0.5 s, the whole startup budget of
`persona list`. These functions take any sqlite3 connection: PersonaLibrary passes the one inside
its SQLAlchemy transaction, and `open.open_for_reading()` a bare one when the file is already at head,
so read-only commands (and a chat opening its persona) never import SQLAlchemy. One implementation serves both.
Column names are those of models.py (the head revision); the tests run both paths.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Protocol

from persona.errors import LibraryError, NotFoundError, first_line
from persona.library.info import ConversationInfo, MessageInfo, PersonaInfo
from persona.library.records import (
    aware,
    defaults_from_json,
    load_metrics,
    load_record,
    message_info,
    not_found,
    version_info,
)

if TYPE_CHECKING:
    from persona.engine.config import PersonaDefaults
    from persona.prompt.softprompt import SoftPrompt

_PERSONA_COLUMNS = """p.id, p.name, p.description, p.created, p.updated, p.active_version,
    v.num_virtual_tokens, v.hidden_size, v.model_id, v.fingerprint, v.metrics_json, p.defaults_json,
    v.kind"""
_PERSONAS = f"""SELECT {_PERSONA_COLUMNS} FROM personas p
    LEFT JOIN prompt_versions v ON v.persona_id = p.id AND v.version = p.active_version"""
_VERSIONS = """SELECT version, num_virtual_tokens, hidden_size, dtype, sha256, model_id, fingerprint,
    fingerprint_json, init, training_json, metrics_json, created, kind
    FROM prompt_versions WHERE persona_id = ? ORDER BY version"""
_PROMPT = """SELECT t.data, v.sha256, v.model_id, v.fingerprint_json FROM prompt_versions v
    JOIN prompt_tensors t ON t.version_id = v.id WHERE v.persona_id = ? AND v.version = ?"""
_CONVERSATIONS = """SELECT c.id, c.title, c.created, c.updated, c.model_fingerprint,
    (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) AS message_count
    FROM conversations c ORDER BY c.updated DESC, c.id DESC"""
_SPEAKERS = """SELECT conversation_id, persona_name, min(id) AS first FROM messages
    WHERE persona_name IS NOT NULL GROUP BY conversation_id, persona_name ORDER BY first"""
_MESSAGES = """SELECT id, conversation_id, role, content, persona_name, created, token_count, cut_short
    FROM messages WHERE conversation_id = ? ORDER BY id"""


def _rows(connection: sqlite3.Connection, sql: str, params: tuple = ()) -> list[Any]:
    cursor = connection.cursor()
    cursor.row_factory = lambda cur, row: SimpleNamespace(
        **{d[0]: v for d, v in zip(cur.description, row, strict=True)}
    )
    try:
        return cursor.execute(sql, params).fetchall()
    finally:
        cursor.close()


def _tags(connection: sqlite3.Connection, persona_id: int | None = None) -> dict[int, list[str]]:
    where, params = ("WHERE persona_id = ?", (persona_id,)) if persona_id is not None else ("", ())
    tags: dict[int, list[str]] = {}
    for persona_id, tag in connection.execute(
        f"SELECT persona_id, tag FROM persona_tags {where} ORDER BY tag", params
    ):
        tags.setdefault(persona_id, []).append(tag)
    return tags


def _persona_info(row: Any, tags: list[str]) -> PersonaInfo:
    return PersonaInfo(
        name=row.name,
        description=row.description,
        tags=tags,
        created=aware(row.created),
        updated=aware(row.updated),
        active_version=row.active_version,
        num_virtual_tokens=row.num_virtual_tokens or 0,
        hidden_size=row.hidden_size or 0,
        model_id=row.model_id or "",
        fingerprint=row.fingerprint or "",
        metrics=load_metrics(row.metrics_json),
        defaults=load_record(row.defaults_json) or {},
        kind=row.kind or "soft",
    )


def list_personas(connection: sqlite3.Connection) -> list[PersonaInfo]:
    """Every persona with its active version's metadata (no tensor is read), sorted by name."""
    tags = _tags(connection)
    rows = connection.execute(
        _PERSONAS + " ORDER BY p.name"
    ).fetchall()  # plain tuples: this is the hot path
    return [
        PersonaInfo(
            name=name,
            description=description,
            tags=tags.get(persona_id, []),
            created=aware(created),
            updated=aware(updated),
            active_version=active_version,
            num_virtual_tokens=tokens or 0,
            hidden_size=width or 0,
            model_id=model_id or "",
            fingerprint=fingerprint or "",
            metrics=load_metrics(metrics_json),
            defaults=load_record(defaults_json) or {},
            kind=kind or "soft",
        )
        for (
            persona_id,
            name,
            description,
            created,
            updated,
            active_version,
            tokens,
            width,
            model_id,
            fingerprint,
            metrics_json,
            defaults_json,
            kind,
        ) in rows
    ]


def get_persona(connection: sqlite3.Connection, name: str) -> PersonaInfo:
    """One persona (names compare case-insensitively) with all of its versions, oldest first."""
    found = _rows(connection, _PERSONAS + " WHERE p.name = ?", (name,))
    if not found:
        raise not_found(name, [row.name for row in _rows(connection, "SELECT name FROM personas")])
    row = found[0]
    info = _persona_info(row, _tags(connection, row.id).get(row.id, []))
    info.versions = [
        version_info(v, row.active_version) for v in _rows(connection, _VERSIONS, (row.id,))
    ]
    return info


def get_prompt(connection: sqlite3.Connection, name: str, version: int | None = None) -> SoftPrompt:
    """The soft prompt of `name` (its active version unless `version` is given), checksum-verified."""
    from persona.model.fingerprint import Fingerprint
    from persona.prompt.softprompt import SoftPrompt

    found = connection.execute(
        "SELECT id, name, description, active_version FROM personas WHERE name = ?", (name,)
    ).fetchone()
    if found is None:
        raise not_found(name, [row[0] for row in connection.execute("SELECT name FROM personas")])
    persona_id, canonical, description, active = found
    wanted = active if version is None else version
    row = connection.execute(_PROMPT, (persona_id, wanted)).fetchone()
    if row is None:
        raise no_version(connection, persona_id, canonical, wanted)
    data, sha256, model_id, fingerprint_json = row
    damaged = f"version {wanted} of persona {canonical!r} is damaged"
    try:
        prompt = SoftPrompt.from_bytes(data, source=f"persona {canonical!r} version {wanted}")
    except Exception as exc:  # noqa: BLE001 - any unreadable blob is damage, reported in one line
        raise LibraryError(
            f"{damaged} ({first_line(exc, 120)}); roll back with `persona rollback {canonical}`"
        ) from None
    if prompt.sha256 != sha256:
        raise LibraryError(
            f"{damaged} (checksum mismatch); roll back with `persona rollback {canonical}` or import it again"
        )
    prompt.name, prompt.description, prompt.base_model = canonical, description, model_id
    prompt.fingerprint = Fingerprint.from_json(fingerprint_json) if fingerprint_json else None
    return prompt


def get_defaults(connection: sqlite3.Connection, name: str) -> PersonaDefaults:
    """The defaults `persona set` stored for `name` (empty when none), validated."""
    found = connection.execute(
        "SELECT name, defaults_json FROM personas WHERE name = ?", (name,)
    ).fetchone()
    if found is None:
        raise not_found(name, [row[0] for row in connection.execute("SELECT name FROM personas")])
    return defaults_from_json(found[0], found[1])


def no_version(
    connection: sqlite3.Connection, persona_id: int, name: str, version: int
) -> NotFoundError:
    have = [
        row[0]
        for row in connection.execute(
            "SELECT version FROM prompt_versions WHERE persona_id = ? ORDER BY version",
            (persona_id,),
        )
    ]
    return NotFoundError(
        f"persona {name!r} has no version {version} (it has {', '.join(map(str, have)) or 'none'}); see `persona show {name}`"
    )


def list_conversations(connection: sqlite3.Connection) -> list[ConversationInfo]:
    """Every conversation, the most recently active first, with who spoke in it."""
    speakers: dict[int, list[str]] = {}
    for row in _rows(connection, _SPEAKERS):
        speakers.setdefault(row.conversation_id, []).append(row.persona_name)
    return [
        ConversationInfo(
            id=c.id,
            title=c.title,
            created=aware(c.created),
            updated=aware(c.updated),
            model_fingerprint=c.model_fingerprint,
            message_count=c.message_count,
            personas=speakers.get(c.id, []),
        )
        for c in _rows(connection, _CONVERSATIONS)
    ]


def get_messages(connection: sqlite3.Connection, conversation_id: int) -> list[MessageInfo]:
    """The messages of one conversation in the order they were written."""
    if not _rows(connection, "SELECT id FROM conversations WHERE id = ?", (conversation_id,)):
        raise NotFoundError(f"no conversation with id {conversation_id}; see `persona history`")
    return [message_info(row) for row in _rows(connection, _MESSAGES, (conversation_id,))]


class LibraryView(Protocol):
    """What the read-only commands need; PersonaLibrary and LibraryReader both provide it."""

    def list_personas(self) -> list[PersonaInfo]: ...
    def get_persona(self, name: str) -> PersonaInfo: ...
    def get_prompt(self, name: str, version: int | None = None) -> SoftPrompt: ...
    def get_defaults(self, name: str) -> PersonaDefaults: ...
    def list_conversations(self) -> list[ConversationInfo]: ...
    def get_messages(self, conversation_id: int) -> list[MessageInfo]: ...
    def close(self) -> None: ...


class LibraryReader:
    """A read-only view of a library already at head, over sqlite3 alone."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path, self.timeout = path, timeout
        self._connection = sqlite3.connect(path, timeout=timeout, isolation_level=None)

    def _read(self, function: Any, *args: Any) -> Any:
        from persona.library.dberrors import translated

        with translated(self.path, self.timeout):
            self._connection.execute("BEGIN")  # one snapshot for the whole read
            try:
                return function(self._connection, *args)
            finally:
                self._connection.execute("COMMIT")

    def list_personas(self) -> list[PersonaInfo]:
        return self._read(list_personas)

    def get_persona(self, name: str) -> PersonaInfo:
        return self._read(get_persona, name)

    def get_prompt(self, name: str, version: int | None = None) -> SoftPrompt:
        return self._read(get_prompt, name, version)

    def get_defaults(self, name: str) -> PersonaDefaults:
        return self._read(get_defaults, name)

    def list_conversations(self) -> list[ConversationInfo]:
        return self._read(list_conversations)

    def get_messages(self, conversation_id: int) -> list[MessageInfo]:
        return self._read(get_messages, conversation_id)

    def close(self) -> None:
        self._connection.close()
