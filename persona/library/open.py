"""`open_library()`: the one way in. Checks the file, migrates it to head, hands back the library."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from persona.errors import LibraryError

if TYPE_CHECKING:
    from persona.library.library import PersonaLibrary

DEFAULT_TIMEOUT_S = 10.0  # how long to wait for another process's write before giving up


def open_library(
    path: str | os.PathLike[str] | None = None, *, timeout: float = DEFAULT_TIMEOUT_S
) -> PersonaLibrary:
    """Open (creating if needed, mode 0600) the library at `path` (default: the data dir's library.db).

    A library file created here gets the starter personas of `personas/` (see persona.starters),
    unless PERSONA_NO_STARTERS is set.

    Refuses, without touching it, a file that is not a SQLite database, a SQLite database that is
    not a persona library, or a library written by a newer persona.
    """
    from persona.library import migrate
    from persona.library.dberrors import translated
    from persona.library.engine import make_engine
    from persona.library.library import PersonaLibrary
    from persona.paths import library_path

    target = Path(path).expanduser() if path is not None else library_path()
    created = not target.exists()
    migrate.ensure_file(target)
    revision = migrate.current_revision(target, timeout)
    if revision != migrate.HEAD_REVISION:
        with translated(target, timeout):
            migrate.upgrade(target, timeout)
    try:
        engine = make_engine(target, timeout)
    except Exception as exc:  # noqa: BLE001 - engine creation does not touch the file; be safe anyway
        raise LibraryError(f"cannot open the library {target}: {exc}") from None
    library = PersonaLibrary(engine, target, timeout)
    if created and not os.environ.get(
        "PERSONA_NO_STARTERS"
    ):  # a new library gets the starter personas
        from persona.starters import install_starters

        install_starters(library)
    return library
