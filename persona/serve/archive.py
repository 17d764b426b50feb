"""`persona serve --save-conversations`: each conversation the API serves, saved in the library
as `persona chat` saves one, every reply under the persona that wrote it.

The API is stateless: each request carries the whole conversation. A request whose messages
continue a conversation saved here (the same messages, then new ones) adds to it; anything else
(a new chat, an edited or regenerated turn, a server restarted since) starts a new conversation
holding the whole history, where earlier replies keep no persona since the server did not write them.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from collections import OrderedDict

from persona.errors import PersonaError, first_line
from persona.library.conversations import make_title
from persona.library.library import PersonaLibrary
from persona.prompt.render import Message

KNOWN_CONVERSATIONS = 4096  # the newest conversations that can be continued


class ConversationArchive:
    def __init__(self, library: PersonaLibrary, model_fingerprint: str) -> None:
        self.library = library
        self.model_fingerprint = model_fingerprint
        self._tips: OrderedDict[str, int] = OrderedDict()  # digest of the messages -> id
        self._lock = threading.Lock()

    def save(
        self,
        messages: list[Message],
        system: str | None,
        reply: str,
        persona: str | None,
        *,
        token_count: int,
        cut_short: bool,
    ) -> int | None:
        """Save a reply and whatever of its conversation is not saved yet; the conversation's id,
        or None when the library refused (the reply itself has been sent: a warning is printed)."""
        try:
            with self._lock:
                return self._save(messages, system, reply, persona, token_count, cut_short)
        except PersonaError as exc:
            print(
                f"persona: warning: a conversation was not saved ({first_line(exc)})",
                file=sys.stderr,
                flush=True,
            )
            return None

    def _save(
        self,
        messages: list[Message],
        system: str | None,
        reply: str,
        persona: str | None,
        token_count: int,
        cut_short: bool,
    ) -> int:
        digests = _chain(system, messages)  # digests[k]: the system text and messages[:k]
        saved, conversation = 0, None
        for count in range(len(messages), 0, -1):
            conversation = self._tips.get(digests[count])
            if conversation is not None:
                saved = count
                del self._tips[digests[count]]
                break
        if conversation is None:
            first_user = next((m["content"] for m in messages if m["role"] == "user"), "")
            conversation = self.library.create_conversation(
                make_title(first_user), self.model_fingerprint
            )
            if system is not None:
                self.library.add_message(conversation, "system", system, None)
        for message in messages[saved:]:
            self.library.add_message(conversation, message["role"], message["content"], None)
        self.library.add_message(
            conversation,
            "assistant",
            reply,
            persona,
            token_count=token_count,
            cut_short=cut_short,
        )
        tip = _chain(system, [*messages, {"role": "assistant", "content": reply}])[-1]
        self._tips[tip] = conversation
        while len(self._tips) > KNOWN_CONVERSATIONS:
            self._tips.popitem(last=False)
        return conversation


def _chain(system: str | None, messages: list[Message]) -> list[str]:
    """Digests of every prefix of the conversation, each built on the one before."""
    digest = hashlib.sha256(json.dumps(system).encode()).hexdigest()
    digests = [digest]
    for message in messages:
        step = json.dumps([digest, message["role"], message["content"]], ensure_ascii=False)
        digest = hashlib.sha256(step.encode()).hexdigest()
        digests.append(digest)
    return digests
