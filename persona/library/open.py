"""The one way in. `open_library()` checks the file, migrates it to head and hands back the library;
`open_for_reading()` hands back a read-only view that skips SQLAlchemy when the file is at head."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from persona.errors import LibraryError
from persona.library import migrate
from persona.paths import library_path

if TYPE_CHECKING:
    from persona.library.library import PersonaLibrary
    from persona.library.reader import LibraryView

DEFAULT_TIMEOUT_S = 10.0  # how long to wait for another process's write before giving up
NO_STARTERS_ENV = "PERSONA_NO_STARTERS"


def open_library(
    path: str | os.PathLike[str] | None = None, *, timeout: float = DEFAULT_TIMEOUT_S
) -> PersonaLibrary:
    """Open (creating if needed, mode 0600) the library at `path` (default: the data dir's library.db).

    A library created here gets the starter personas of `personas/` (see persona.starters) in the
    transaction that creates its tables, unless PERSONA_NO_STARTERS is set: a start killed while
    creating it leaves an empty file, which the next open creates again, starters included.

    Refuses, without touching it, a file that is not a SQLite database, a SQLite database that is
    not a persona library, or a library written by a newer persona.
    """
    from persona.library.dberrors import translated
    from persona.library.engine import make_engine
    from persona.library.library import PersonaLibrary

    target = Path(path).expanduser() if path is not None else library_path()
    migrate.ensure_file(target)
    revision = migrate.current_revision(target, timeout)
    try:
        engine = make_engine(target, timeout)
    except Exception as exc:  # noqa: BLE001 - engine creation does not touch the file; be safe anyway
        raise LibraryError(f"cannot open the library {target}: {exc}") from None
    library = PersonaLibrary(engine, target, timeout)
    if revision != migrate.HEAD_REVISION:
        populate = None
        if revision is None and not os.environ.get(NO_STARTERS_ENV):  # a new library
            from persona.starters import load_starters

            starters = load_starters()  # read before the write lock is taken

            def populate(connection: object) -> None:
                library.install_starters(starters, within=connection)  # type: ignore[arg-type]

        with translated(target, timeout):
            migrate.upgrade(target, timeout, then=populate)
    return library


def open_for_reading(
    path: str | os.PathLike[str] | None = None, *, timeout: float | None = None
) -> LibraryView:
    """A fast read-only view when the library is at head; otherwise the full `open_library()`."""
    from persona.library.reader import LibraryReader

    timeout = DEFAULT_TIMEOUT_S if timeout is None else timeout
    target = Path(path).expanduser() if path is not None else library_path()
    if target.is_file() and migrate.current_revision(target, timeout) == migrate.HEAD_REVISION:
        return LibraryReader(target, timeout)
    return open_library(target, timeout=timeout)
