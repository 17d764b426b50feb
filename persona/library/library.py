"""PersonaLibrary: personas and their soft-prompt versions (conversations are in conversations.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, delete, func, select
from sqlalchemy.orm import Session

from persona.engine.config import PersonaDefaults
from persona.errors import AlreadyExistsError, LibraryError, NotFoundError
from persona.library import reader
from persona.library.conversations import ConversationStore
from persona.library.info import PersonaInfo, VersionInfo
from persona.library.models import Persona, PersonaTag, PromptTensor, PromptVersion, Setting, utcnow
from persona.library.records import (
    check_name,
    check_tags,
    current_metric_names,
    defaults_from_json,
    dump_defaults,
    dump_record,
    load_metrics,
    not_found,
    version_info,
)
from persona.library.settings import DEFAULT_PERSONA_KEY
from persona.starters import StarterPrompt, default_starter

if TYPE_CHECKING:
    from persona.prompt.softprompt import SoftPrompt


class PersonaLibrary(ConversationStore):
    """The one place persona keeps state. Open it with `open_library()`."""

    # ---- personas and versions ----------------------------------------------------------------

    def add_version(
        self,
        name: str,
        prompt: SoftPrompt,
        *,
        description: str | None = None,
        model_id: str = "",
        training: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        tags: list[str] | None = None,
        defaults: PersonaDefaults | None = None,
    ) -> VersionInfo:
        """Store `prompt` as the next version of `name` (created if new) and make it active;
        `defaults`, when given, replace the persona's (see `set_defaults`)."""
        check_name(name)
        prompt.check_consistent()
        data = prompt.to_bytes()  # safetensors: the (N, D) float32 tensor + metadata header
        training_json = dump_record(training, "training")
        metrics_json = dump_record(metrics, "metrics")
        clean_tags = check_tags(tags) if tags is not None else None
        defaults_json = dump_defaults(defaults) if defaults is not None else None
        fingerprint = prompt.fingerprint
        with self.writing() as session:
            persona = session.scalar(select(Persona).where(Persona.name == name))
            now = utcnow()
            if persona is None:
                persona = Persona(
                    name=name,
                    description=description if description is not None else prompt.description,
                    active_version=0,
                    created=now,
                    updated=now,
                )
                session.add(persona)
                session.flush()
            elif description is not None:
                persona.description = description
            latest = session.scalar(
                select(func.max(PromptVersion.version)).where(
                    PromptVersion.persona_id == persona.id
                )
            )
            row = PromptVersion(
                persona_id=persona.id,
                version=(latest or 0) + 1,
                num_virtual_tokens=prompt.num_virtual_tokens,
                hidden_size=prompt.hidden_size,
                kind=prompt.kind,
                dtype="float32",
                sha256=prompt.sha256,
                model_id=model_id or prompt.base_model,
                fingerprint=str(fingerprint) if fingerprint else "",
                fingerprint_json=fingerprint.to_json() if fingerprint else "",
                init=prompt.init,
                training_json=training_json,
                metrics_json=metrics_json,
                created=now,
            )
            row.tensor = PromptTensor(data=data)
            session.add(row)
            persona.active_version = row.version
            persona.updated = now
            if defaults is not None:
                persona.defaults_json = defaults_json
            if clean_tags is not None:
                session.execute(delete(PersonaTag).where(PersonaTag.persona_id == persona.id))
                session.add_all(PersonaTag(persona_id=persona.id, tag=tag) for tag in clean_tags)
            session.flush()
            return version_info(row, row.version)

    def get_prompt(self, name: str, version: int | None = None) -> SoftPrompt:
        """The soft prompt of `name` (its active version unless `version` is given), checksum-verified."""
        with self.reading() as session:
            return reader.get_prompt(self.sqlite(session), name, version)

    def list_personas(self) -> list[PersonaInfo]:
        """Every persona with its active version's metadata (no tensor is read), sorted by name."""
        with self.reading() as session:
            return reader.list_personas(self.sqlite(session))

    def get_persona(self, name: str) -> PersonaInfo:
        """One persona with all of its versions (oldest first)."""
        with self.reading() as session:
            return reader.get_persona(self.sqlite(session), name)

    def get_defaults(self, name: str) -> PersonaDefaults:
        """The persona's own sampling defaults, stop strings and greeting (empty when none set)."""
        with self.reading() as session:
            return reader.get_defaults(self.sqlite(session), name)

    def set_defaults(
        self, name: str, changes: dict[str, Any], *, reset: bool = False
    ) -> PersonaDefaults:
        """Change some of a persona's defaults (a None value unsets that one) and return them all.

        reset: start from none, also when the stored record no longer reads.
        """
        with self.writing() as session:
            persona = self._find(session, name)
            current = (
                PersonaDefaults()
                if reset
                else defaults_from_json(persona.name, persona.defaults_json)
            )
            defaults = current.updated(changes)  # ConfigError names a bad key or value
            persona.defaults_json, persona.updated = dump_defaults(defaults), utcnow()
            return defaults

    def set_metrics(self, name: str, version: int, updates: dict[str, Any]) -> VersionInfo:
        """Add or replace keys of a version's stored evaluation (e.g. the style report measured
        after the prompt was stored), leaving the others as they are."""
        with self.writing() as session:
            persona = self._find(session, name)
            row = session.scalar(
                select(PromptVersion).where(
                    PromptVersion.persona_id == persona.id, PromptVersion.version == version
                )
            )
            if row is None:
                raise self._no_version(session, persona, version)
            metrics = load_metrics(row.metrics_json) or {}
            row.metrics_json = dump_record({**metrics, **updates}, "metrics")
            return version_info(row, version)

    def has_persona(self, name: str) -> bool:
        with self.reading() as session:
            return session.scalar(select(Persona.id).where(Persona.name == name)) is not None

    def rename(self, old: str, new: str) -> None:
        """Rename a persona; past messages keep the name they were written under."""
        check_name(new)
        with self.writing() as session:
            persona = self._find(session, old)
            clash = session.scalar(select(Persona).where(Persona.name == new))
            if clash is not None and clash.id != persona.id:
                raise AlreadyExistsError(
                    f"a persona named {clash.name!r} already exists; choose another name"
                )
            previous, persona.name, persona.updated = persona.name, new, utcnow()
            default = session.get(Setting, DEFAULT_PERSONA_KEY)
            if default is not None and default.value == previous:
                default.value = new

    def delete(self, name: str) -> None:
        """Delete a persona and all its versions; its messages stay, under the name they had."""
        with self.writing() as session:
            persona = self._find(session, name)
            default = session.get(Setting, DEFAULT_PERSONA_KEY)
            if default is not None and default.value == persona.name:
                session.delete(default)
            session.delete(persona)

    def rollback(self, name: str, version: int | None = None) -> VersionInfo:
        """Make `version` (default: the one before the active one) the active version."""
        with self.writing() as session:
            persona = self._find(session, name)
            if version is None:
                version = session.scalar(
                    select(func.max(PromptVersion.version)).where(
                        PromptVersion.persona_id == persona.id,
                        PromptVersion.version < persona.active_version,
                    )
                )
                if version is None:
                    raise LibraryError(
                        f"persona {persona.name!r} is already at its oldest version ({persona.active_version}); "
                        "name a VERSION to move to a newer one"
                    )
            row = session.scalar(
                select(PromptVersion).where(
                    PromptVersion.persona_id == persona.id, PromptVersion.version == version
                )
            )
            if row is None:
                raise self._no_version(session, persona, version)
            persona.active_version, persona.updated = version, utcnow()
            return version_info(row, version)

    def install_starters(
        self, starters: Sequence[StarterPrompt], *, within: Connection | None = None
    ) -> list[str]:
        """Add every starter the library lacks, and a default persona if none is set; the names added.

        within: the connection of an open transaction to join (the one that creates the library, so
        that a library never exists without its starters) instead of a transaction of its own.
        """
        if within is None:
            with self.writing() as session:
                return _add_starters(session, starters)
        with Session(bind=within, expire_on_commit=False) as session:
            added = _add_starters(session, starters)
            session.flush()  # the rows go in with `within`'s transaction, committed by its owner
            return added

    # ---- settings -----------------------------------------------------------------------------

    def get_setting(self, key: str, default: str | None = None) -> str | None:
        with self.reading() as session:
            row = session.get(Setting, key)
            return row.value if row is not None else default

    def set_setting(self, key: str, value: str | None) -> None:
        """Store a small string setting (None removes it), e.g. "default_persona"."""
        with self.writing() as session:
            row = session.get(Setting, key)
            if value is None:
                if row is not None:
                    session.delete(row)
            elif row is None:
                session.add(Setting(key=key, value=str(value)))
            else:
                row.value = str(value)

    # ---- helpers ------------------------------------------------------------------------------

    def _find(self, session: Session, name: str) -> Persona:
        persona = session.scalar(select(Persona).where(Persona.name == name))
        if persona is None:
            raise not_found(name, list(session.scalars(select(Persona.name))))
        return persona

    def _no_version(self, session: Session, persona: Persona, version: int) -> NotFoundError:
        return reader.no_version(self.sqlite(session), persona.id, persona.name, version)


def _add_starters(session: Session, starters: Sequence[StarterPrompt]) -> list[str]:
    have = {name.lower() for name in session.scalars(select(Persona.name))}
    added: list[str] = []
    for starter, prompt in ((item.starter, item.prompt) for item in starters):
        if starter.name.lower() in have:
            continue
        now = utcnow()
        row = Persona(
            name=check_name(starter.name),
            description=starter.description,
            active_version=1,
            created=now,
            updated=now,
        )
        row.versions.append(
            PromptVersion(
                version=1,
                num_virtual_tokens=prompt.num_virtual_tokens,
                hidden_size=prompt.hidden_size,
                kind=prompt.kind,
                dtype="float32",
                sha256=prompt.sha256,
                model_id=prompt.metadata.get("base_model", ""),
                fingerprint=str(prompt.fingerprint) if prompt.fingerprint else "",
                fingerprint_json=prompt.fingerprint.to_json() if prompt.fingerprint else "",
                init=prompt.metadata.get("init", "text"),
                training_json=dump_record(starter.training, "training"),
                metrics_json=dump_record(current_metric_names(starter.metrics), "metrics"),
                created=now,
                tensor=PromptTensor(data=prompt.data),
            )
        )
        row.tags = [PersonaTag(tag=tag) for tag in check_tags(starter.tags)]
        row.defaults_json = dump_defaults(
            PersonaDefaults.from_table(starter.defaults, f"starter {starter.name!r}")
        )
        session.add(row)
        added.append(starter.name)
    default = default_starter([item.starter.name for item in starters])
    if default is not None and session.get(Setting, DEFAULT_PERSONA_KEY) is None:
        session.add(Setting(key=DEFAULT_PERSONA_KEY, value=default))
    return added
