"""Turn SQLite failures into one-line LibraryErrors that say what to do."""

from __future__ import annotations

import errno
import shutil
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from persona.errors import LibraryError, NotFoundError, first_line

FULL_BELOW_BYTES = (
    4 * 1024 * 1024
)  # less free space than this, and an I/O error on write is a full disk


def describe(exc: BaseException, path: Path, timeout: float) -> str:
    """One line for a sqlite3 / OS error met while using the library at `path`."""
    first = first_line(getattr(exc, "orig", None) or exc)
    low = first.lower()
    if "locked" in low or "busy" in low:
        return (
            f"the library {path} is locked by another persona process (waited {timeout:g} s); "
            "try again when it finishes"
        )
    if (
        "disk is full" in low
        or getattr(exc, "errno", None) == errno.ENOSPC
        or ("disk i/o error" in low and _nearly_full(path))
    ):
        return f"cannot write the library {path}: the disk is full; free some space and try again (nothing was changed)"
    if (
        "readonly" in low
        or "read-only" in low
        or getattr(exc, "errno", None) in (errno.EACCES, errno.EPERM, errno.EROFS)
    ):
        return f"cannot write the library {path}: it is read-only; check its permissions or pass another --library"
    if "not a database" in low or "malformed" in low or "corrupt" in low:
        return f"the library {path} is damaged ({first}); restore it from a backup or move it away to start a new one"
    if "unable to open" in low:
        return f"cannot open the library {path} ({first}); check the path and its permissions"
    return f"library {path}: {first}"


def _nearly_full(path: Path) -> bool:
    """SQLite reports ENOSPC met while growing the WAL as a plain I/O error: tell them apart by the free space."""
    try:
        return shutil.disk_usage(path.parent).free < FULL_BELOW_BYTES
    except OSError:
        return False


@contextmanager
def translated(path: Path, timeout: float) -> Iterator[None]:
    """Run a library operation; any database or OS failure leaves as a LibraryError."""
    try:
        yield
    except (sqlite3.Error, OSError) as exc:
        raise LibraryError(describe(exc, path, timeout)) from None
    except (
        OverflowError
    ):  # an id or version past SQLite's 64-bit integers names nothing that exists
        raise NotFoundError(
            f"no such id or version in the library {path}: the number is out of range"
        ) from None
    except Exception as exc:
        if _is_database_error(exc):
            raise LibraryError(describe(exc, path, timeout)) from None
        raise


def _is_database_error(exc: Exception) -> bool:
    """A SQLAlchemy DBAPIError, checked without importing SQLAlchemy (the sqlite3 reader never does)."""
    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")
    return sqlalchemy_exc is not None and isinstance(exc, sqlalchemy_exc.DBAPIError)
