"""The library schema as SQLAlchemy 2 ORM classes (the head revision of migrations/).

Changing a column here needs a new Alembic revision in migrations/versions/ too; the migration
tests compare the two.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Naive UTC (SQLite has no time zones); `info` records attach UTC again on the way out."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Persona(Base):
    __tablename__ = "personas"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(
        String(200, collation="NOCASE"), unique=True
    )  # "Hamlet" == "hamlet"
    description: Mapped[str] = mapped_column(Text, default="")
    active_version: Mapped[int] = mapped_column(Integer, default=0)  # a PromptVersion.version
    # PersonaDefaults.to_dict() as JSON, NULL when nothing is set (since 0004)
    defaults_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    versions: Mapped[list[PromptVersion]] = relationship(
        back_populates="persona",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="PromptVersion.version",
    )
    tags: Mapped[list[PersonaTag]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="PersonaTag.tag"
    )


class PromptVersion(Base):
    """One soft prompt of a persona: its shape, checksum, model and how it came to be."""

    __tablename__ = "prompt_versions"
    __table_args__ = (
        UniqueConstraint("persona_id", "version", name="uq_prompt_versions_persona_version"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    persona_id: Mapped[int] = mapped_column(
        ForeignKey("personas.id", ondelete="CASCADE"), index=True
    )
    version: Mapped[int] = mapped_column(Integer)
    num_virtual_tokens: Mapped[int] = mapped_column(Integer)  # N
    hidden_size: Mapped[int] = mapped_column(Integer)  # D
    # soft: (N, D) input embeddings | deep: keys and values at every layer (revision 0005)
    kind: Mapped[str] = mapped_column(String(10), default="soft", server_default="soft")
    dtype: Mapped[str] = mapped_column(String(20), default="float32")
    sha256: Mapped[str] = mapped_column(String(64))  # of the raw (N, D) float32 values
    model_id: Mapped[str] = mapped_column(Text, default="")
    fingerprint: Mapped[str] = mapped_column(Text, default="")  # str(Fingerprint)
    fingerprint_json: Mapped[str] = mapped_column(Text, default="")  # Fingerprint.to_json()
    init: Mapped[str] = mapped_column(String(20), default="random")
    training_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    metrics_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    persona: Mapped[Persona] = relationship(back_populates="versions")
    tensor: Mapped[PromptTensor] = relationship(cascade="all, delete-orphan", passive_deletes=True)


class PromptTensor(Base):
    """The tensor of a PromptVersion, apart so metadata reads stay small (revision 0003)."""

    __tablename__ = "prompt_tensors"

    version_id: Mapped[int] = mapped_column(
        ForeignKey("prompt_versions.id", ondelete="CASCADE"), primary_key=True
    )
    data: Mapped[bytes] = mapped_column(
        LargeBinary
    )  # SoftPrompt.to_bytes(): safetensors, (N, D) float32


class PersonaTag(Base):
    """Added in revision 0002."""

    __tablename__ = "persona_tags"

    persona_id: Mapped[int] = mapped_column(
        ForeignKey("personas.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(100), primary_key=True)


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(Text, default="")
    model_fingerprint: Mapped[str] = mapped_column(Text, default="")
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    messages: Mapped[list[Message]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="Message.id"
    )


class Message(Base):
    """A turn. `persona_name` is the name at the time, so renames and deletes never lose who spoke."""

    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[str] = mapped_column(String(20))
    content: Mapped[str] = mapped_column(Text)
    persona_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    persona_id: Mapped[int | None] = mapped_column(
        ForeignKey("personas.id", ondelete="SET NULL"), nullable=True, index=True
    )
    token_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cut_short: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )  # since 0002
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Setting(Base):
    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
