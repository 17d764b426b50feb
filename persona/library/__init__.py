"""The persona library: one SQLite file holding personas, their prompt versions and conversations.

    from persona.library import open_library
    lib = open_library()          # the data dir's library.db, migrated to head

Importing this package is cheap: SQLAlchemy is loaded only when a library is opened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from persona.library.info import ConversationInfo, MessageInfo, PersonaInfo, VersionInfo
from persona.library.open import DEFAULT_TIMEOUT_S, open_library

if TYPE_CHECKING:
    from persona.library.library import PersonaLibrary

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "ConversationInfo",
    "MessageInfo",
    "PersonaInfo",
    "PersonaLibrary",
    "VersionInfo",
    "open_library",
]


def __getattr__(name: str) -> Any:
    if name == "PersonaLibrary":
        from persona.library.library import PersonaLibrary

        return PersonaLibrary
    raise AttributeError(f"module 'persona.library' has no attribute {name!r}")
