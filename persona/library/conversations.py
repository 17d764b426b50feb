"""Conversations and their messages. Each message keeps the name of the persona that wrote it."""

from __future__ import annotations

from sqlalchemy import select

from persona.errors import LibraryError, NotFoundError
from persona.library import reader
from persona.library.info import ConversationInfo, MessageInfo
from persona.library.models import Conversation, Message, Persona, utcnow
from persona.library.records import ROLES
from persona.library.store import Store

TITLE_LENGTH = 60


def make_title(text: str) -> str:
    """A conversation's title: the first line of its first message, shortened."""
    line = next((part.strip() for part in text.splitlines() if part.strip()), "") or "untitled"
    return line if len(line) <= TITLE_LENGTH else line[: TITLE_LENGTH - 1].rstrip() + "…"


class ConversationStore(Store):
    def create_conversation(self, title: str, model_fingerprint: str) -> int:
        with self.writing() as session:
            now = utcnow()
            conversation = Conversation(
                title=title, model_fingerprint=model_fingerprint, created=now, updated=now
            )
            session.add(conversation)
            session.flush()
            return conversation.id

    def add_message(
        self,
        conversation_id: int,
        role: str,
        content: str,
        persona: str | None,
        token_count: int | None = None,
        cut_short: bool = False,
    ) -> int:
        """Append a message; `persona` is the name of the persona that wrote it (None for the user)."""
        if role not in ROLES:
            raise LibraryError(f"message role {role!r} is not one of {', '.join(ROLES)}")
        with self.writing() as session:
            conversation = self._conversation(session, conversation_id)
            persona_id = None
            if persona is not None:
                found = session.execute(
                    select(Persona.id, Persona.name).where(Persona.name == persona)
                ).first()
                if found is not None:
                    persona_id, persona = found.id, found.name
            now = utcnow()
            message = Message(
                conversation_id=conversation.id,
                role=role,
                content=content,
                persona_name=persona,
                persona_id=persona_id,
                token_count=token_count,
                cut_short=cut_short,
                created=now,
            )
            session.add(message)
            conversation.updated = now
            session.flush()
            return message.id

    def delete_message(self, message_id: int) -> None:
        with self.writing() as session:
            message = session.get(Message, message_id)
            if message is None:
                raise NotFoundError(f"no message with id {message_id}; see `persona history`")
            session.delete(message)

    def set_conversation_title(self, conversation_id: int, title: str) -> None:
        with self.writing() as session:
            self._conversation(session, conversation_id).title = title

    def delete_conversation(self, conversation_id: int) -> None:
        with self.writing() as session:
            session.delete(self._conversation(session, conversation_id))

    def list_conversations(self) -> list[ConversationInfo]:
        """Every conversation, the most recently active first."""
        with self.reading() as session:
            return reader.list_conversations(self.sqlite(session))

    def get_messages(self, conversation_id: int) -> list[MessageInfo]:
        """The messages of one conversation, in the order they were written."""
        with self.reading() as session:
            return reader.get_messages(self.sqlite(session), conversation_id)

    def _conversation(self, session, conversation_id: int) -> Conversation:  # noqa: ANN001
        conversation = session.get(Conversation, conversation_id)
        if conversation is None:
            raise NotFoundError(f"no conversation with id {conversation_id}; see `persona history`")
        return conversation
