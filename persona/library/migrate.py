"""Open a library file safely and bring its schema to head with Alembic.

Before anything is written the file is checked with plain sqlite3: it must be a SQLite database
that is empty or carries a schema revision this version of persona knows. A library written by a
newer persona is refused untouched. When the file is already at head, Alembic is not even imported.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import persona
from persona.errors import LibraryError
from persona.library.dberrors import describe

# Every revision in migrations/versions, oldest first (a test checks this against the scripts).
KNOWN_REVISIONS: tuple[str, ...] = (
    "0001_initial",
    "0002_tags_and_cut_short",
    "0003_tensors_apart",
    "0004_persona_defaults",
    "0005_prompt_kind",
)
HEAD_REVISION = KNOWN_REVISIONS[-1]
SQLITE_MAGIC = b"SQLite format 3\x00"


def migrations_dir() -> Path:
    """The Alembic scripts: `persona/_migrations` (in a wheel; a link to migrations/ in the source tree),
    else the top-level migrations/ next to the package."""
    package = Path(persona.__file__).resolve().parent
    for path in (package / "_migrations", package.parent / "migrations"):
        if (path / "env.py").is_file():
            return path
    raise LibraryError(
        f"the library migrations are missing (looked in {package / '_migrations'}); reinstall persona"
    )


def ensure_file(path: Path) -> None:
    """Create an empty owner-only (0600) file if there is none, so SQLite never makes it world-readable."""
    if path.is_dir():
        raise LibraryError(
            f"{path} is a directory, not a library file; pass a file path with --library"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
    except FileExistsError:
        pass
    except OSError as exc:
        raise LibraryError(
            f"cannot create the library {path} ({exc.strerror}); check the directory's permissions"
        ) from None


def current_revision(path: Path, timeout: float) -> str | None:
    """The schema revision stored in `path` (None for an empty database), refusing foreign files."""
    try:
        with path.open("rb") as handle:
            magic = handle.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise LibraryError(
            f"cannot read the library {path} ({exc.strerror}); check the path and its permissions"
        ) from None
    if magic and magic != SQLITE_MAGIC:
        raise LibraryError(
            f"{path} is not a persona library (not a SQLite database); pass another --library path or move that file away"
        )
    try:
        connection = sqlite3.connect(path, timeout=timeout)
        try:
            tables = {
                row[0]
                for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if "alembic_version" not in tables:
                user_tables = {name for name in tables if not name.startswith("sqlite_")}
                if user_tables:
                    raise LibraryError(
                        f"{path} is a SQLite database but not a persona library (tables: {', '.join(sorted(user_tables)[:4])}); "
                        "pass another --library path"
                    )
                return None
            rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise LibraryError(describe(exc, path, timeout)) from None
    if len(rows) != 1:
        raise LibraryError(
            f"the library {path} has a damaged schema record ({len(rows)} revisions); restore it from a backup"
        )
    revision = str(rows[0][0])
    if revision not in KNOWN_REVISIONS:
        raise LibraryError(
            f"the library {path} was written by a newer version of persona (schema {revision!r}); "
            "upgrade persona to open it (nothing was changed)"
        )
    return revision


def alembic_config(connection=None):  # noqa: ANN001 - an optional SQLAlchemy Connection
    """An Alembic Config pointing at migrations/, no alembic.ini needed."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(
    path: Path, timeout: float, target: str = "head", then: Callable[[Any], object] | None = None
) -> None:
    """Run the migrations up to `target` as one transaction (foreign keys off while tables are rebuilt).

    then: called with the transaction's connection after the migrations, before the commit: what
    it writes goes in with the schema or not at all.
    """
    _run("upgrade", path, timeout, target, then)


def downgrade(path: Path, timeout: float, target: str) -> None:
    """Run the migrations down to `target` (tests and hand use; persona never downgrades by itself)."""
    _run("downgrade", path, timeout, target)


def _run(
    direction: str,
    path: Path,
    timeout: float,
    target: str,
    then: Callable[[Any], object] | None = None,
) -> None:
    from alembic import command

    from persona.library.engine import make_engine, writer

    engine = make_engine(path, timeout, foreign_keys=False)
    try:
        with writer(engine).begin() as connection:
            getattr(command, direction)(alembic_config(connection), target)
            if then is not None:
                then(connection)
    finally:
        engine.dispose()
