"""The conversation on screen and its copy in the library, kept in step.

Every finished message is written at once; a message the library could not take (locked, disk
full) stays in memory marked unsaved and is written with the next one, so nothing typed or
generated is lost while the app runs. A conversation may open with the persona's greeting; until
the user says something it is not saved, and switching persona swaps the greeting. The session
also knows whether a reply is being written, and refuses what must wait for it (sending, retry,
undo) with a message the screen shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from persona.engine.config import PersonaDefaults
from persona.errors import NotFoundError, PersonaError
from persona.library.conversations import make_title
from persona.prompt.render import Message
from persona.tui.reply import ReplyOutcome

BUSY = "a reply is still being written; press Esc to stop it first"


class Refused(PersonaError):
    """A request the chat declines as things stand (a reply is being written, nothing to undo);
    the screen shows it as a warning, not an error."""


class Library(Protocol):
    """The part of `persona.library` the chat client uses."""

    def create_conversation(self, title: str, model_fingerprint: str) -> int: ...
    def add_message(
        self,
        conversation_id: int,
        role: str,
        content: str,
        persona: str | None,
        token_count: int | None = None,
        cut_short: bool = False,
    ) -> int: ...
    def delete_message(self, message_id: int) -> None: ...
    def get_messages(self, conversation_id: int) -> list[Any]: ...
    def list_conversations(self) -> list[Any]: ...
    def list_personas(self) -> list[Any]: ...
    def get_prompt(self, name: str) -> Any: ...
    def get_defaults(self, name: str) -> PersonaDefaults: ...
    def get_setting(self, key: str) -> str | None: ...
    def close(self) -> None: ...


@dataclass
class Turn:
    role: str  # user | assistant
    content: str
    persona: str | None = None  # who spoke, for assistant turns
    token_count: int | None = None
    cut_short: bool = False
    message_id: int | None = None  # the library's id once saved


class ChatSession:
    def __init__(self, library: Library, model_fingerprint: str) -> None:
        self.library = library
        self.model_fingerprint = model_fingerprint
        self.conversation_id: int | None = None
        self.turns: list[Turn] = []
        self.replying = False  # a reply is being written (between begin_reply and end_reply)

    # ---- reading ------------------------------------------------------------------------------

    def history(self) -> list[Message]:
        """What the engine sees: every turn, in order."""
        return [{"role": turn.role, "content": turn.content} for turn in self.turns]

    @property
    def unsaved(self) -> int:
        return sum(1 for turn in self.turns if turn.message_id is None)

    @property
    def started(self) -> bool:
        """The user has said something: from then on the conversation is saved and kept."""
        return any(turn.role == "user" for turn in self.turns)

    def last_persona(self) -> str | None:
        """The persona of the latest reply (what a resumed conversation continues with)."""
        return next((t.persona for t in reversed(self.turns) if t.role == "assistant"), None)

    # ---- changing -----------------------------------------------------------------------------

    def resume(self, conversation_id: int | None) -> None:
        """Load a saved conversation (None: the most recently updated one)."""
        if conversation_id is None:
            conversations = self.library.list_conversations()
            if not conversations:
                raise NotFoundError(
                    "there is no saved conversation to resume; start one with `persona chat`"
                )
            conversation_id = max(conversations, key=lambda c: (c.updated, c.id)).id
        messages = self.library.get_messages(conversation_id)
        self.conversation_id = conversation_id
        self.turns = [
            Turn(m.role, m.content, m.persona, m.token_count, bool(m.cut_short), m.id)
            for m in messages
            if m.role in ("user", "assistant")
        ]

    def start_new(self) -> None:
        """Forget the screen's conversation; the next message opens a new one in the library."""
        self.conversation_id = None
        self.turns = []

    def greet(self, greeting: str | None, persona: str | None) -> bool:
        """Open a conversation that has not started with `persona`'s `greeting` (None: with
        nothing), in place of any earlier greeting. False when it has started: it stays as it is."""
        if self.started:
            return False
        for turn in self.turns:
            self._forget(turn)
        self.turns = [Turn("assistant", greeting, persona)] if greeting else []
        return True

    def add(self, turn: Turn) -> Turn:
        """Append a finished message and save it (with any earlier one that is not saved yet)."""
        self.turns.append(turn)
        self.save()
        return turn

    def save(self) -> None:
        """Write every unsaved turn, oldest first; a PersonaError leaves the rest for next time.
        Nothing is written before the user has said something (a greeting alone is not kept)."""
        if not self.started:
            return
        if self.conversation_id is None:
            first_user = next((t.content for t in self.turns if t.role == "user"), "")
            self.conversation_id = self.library.create_conversation(
                make_title(first_user), self.model_fingerprint
            )
        for turn in self.turns:
            if turn.message_id is None:
                turn.message_id = self.library.add_message(
                    self.conversation_id,
                    turn.role,
                    turn.content,
                    turn.persona,
                    token_count=turn.token_count,
                    cut_short=turn.cut_short,
                )

    def drop_last_reply(self) -> Turn | None:
        """Remove the latest reply (for /retry); the user's message before it stays."""
        if not self.turns or self.turns[-1].role != "assistant":
            return None
        self._forget(self.turns[-1])
        return self.turns.pop()

    def undo(self) -> list[Turn]:
        """Remove the last exchange: the latest reply (if any) and the user message it answered."""
        removed: list[Turn] = []
        if self.turns and self.turns[-1].role == "assistant":
            self._forget(self.turns[-1])
            removed.append(self.turns.pop())
        if self.turns and self.turns[-1].role == "user":
            self._forget(self.turns[-1])
            removed.append(self.turns.pop())
        return removed

    # ---- what the chat asks for --------------------------------------------------------------

    def user_turn(self, text: str) -> Turn:
        """The user's message as typed (`//` sends a literal `/`); Refused while a reply is written.

        Not added yet: the screen shows it first, then `add`s it."""
        self._check_idle()
        text = text.strip()
        return Turn("user", text[1:] if text.startswith("//") else text)

    def begin_reply(self) -> list[Message]:
        """A reply starts: what the engine sees."""
        self._check_idle()
        self.replying = True
        return self.history()

    def end_reply(self, outcome: ReplyOutcome) -> Turn | None:
        """The reply ended: its turn, to be `add`ed, or None when it holds no text to keep."""
        self.replying = False
        if not outcome.text.strip():
            return None
        return Turn(
            "assistant",
            outcome.text,
            outcome.persona,
            outcome.new_tokens or None,
            outcome.cut_short,
        )

    def drop_for_retry(self) -> Turn | None:
        """Drop the latest reply so that it can be written again (None: there was none)."""
        self._check_idle()
        if not self.started:
            raise Refused("nothing to retry yet: send a message first")
        return self.drop_last_reply()

    def undo_exchange(self) -> list[Turn]:
        """`undo`, refused while a reply is written or when there is nothing to undo."""
        self._check_idle()
        removed = self.undo() if self.started else []  # a greeting alone is not the user's to undo
        if not removed:
            raise Refused("nothing to undo")
        return removed

    def open(self, conversation_id: int) -> None:
        """Save what is not saved yet, then continue conversation `conversation_id`."""
        self._check_idle()
        self.save()
        self.resume(conversation_id)

    def _check_idle(self) -> None:
        if self.replying:
            raise Refused(BUSY)

    def _forget(self, turn: Turn) -> None:
        if turn.message_id is not None:
            self.library.delete_message(turn.message_id)
            turn.message_id = None
