"""A library file that is not ours, newer, locked, damaged or on a full disk: one line, nothing changed."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest
from sqlalchemy import event

from persona.errors import LibraryError
from persona.library import open_library
from persona.library.open import open_for_reading
from tests.library_helpers import make_prompt


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and message
    return message


def test_a_file_that_is_not_sqlite_is_refused_untouched(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("my shopping list\n" * 10)
    before = digest(path)
    with pytest.raises(LibraryError) as exc:
        open_library(path)
    assert "not a persona library (not a SQLite database)" in one_line(exc)
    with pytest.raises(LibraryError):
        open_for_reading(path)
    assert digest(path) == before


def test_a_foreign_sqlite_database_is_refused_untouched(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    connection.close()
    before = digest(path)
    with pytest.raises(
        LibraryError, match="SQLite database but not a persona library .tables: invoices"
    ):
        open_library(path)
    assert digest(path) == before


def test_a_library_from_a_newer_persona_is_refused_untouched(tmp_path):
    path = tmp_path / "library.db"
    open_library(path).close()
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '0099_from_the_future'")
    connection.close()
    before = digest(path)
    with pytest.raises(LibraryError) as exc:
        open_library(path)
    assert "written by a newer version of persona (schema '0099_from_the_future')" in one_line(exc)
    with pytest.raises(LibraryError, match="newer version"):
        open_for_reading(path)
    assert digest(path) == before


def test_a_damaged_file_gets_one_line(tmp_path):
    path = tmp_path / "library.db"
    lib = open_library(path)
    lib.add_version("hamlet", make_prompt())
    lib.close()
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # wreck the schema page, keep the SQLite magic
    path.write_bytes(bytes(data))
    with pytest.raises(LibraryError) as exc:
        open_library(path)
    assert "damaged" in one_line(exc) and "backup" in str(exc.value)


def test_a_locked_library_waits_then_says_so_and_stays_as_it_was(tmp_path):
    path = tmp_path / "library.db"
    lib = open_library(path, timeout=0.2)
    lib.add_version("hamlet", make_prompt())
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process is in the middle of a write
    try:
        with pytest.raises(LibraryError) as exc:
            lib.add_version("ophelia", make_prompt(seed=1))
        assert "is locked by another persona process (waited 0.2 s)" in one_line(exc)
        assert [p.name for p in lib.list_personas()] == ["hamlet"]  # WAL: reading still works
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    lib.add_version("ophelia", make_prompt(seed=1))  # and once the lock is gone, writing works
    assert [p.name for p in lib.list_personas()] == ["hamlet", "ophelia"]
    lib.close()


def test_a_disk_that_fills_during_a_write_leaves_the_library_as_it_was(tmp_path):
    path = tmp_path / "library.db"
    lib = open_library(path)
    lib.add_version("hamlet", make_prompt())
    before = lib.get_persona("hamlet")

    @event.listens_for(lib.engine, "connect")
    def _full_disk(dbapi_connection, _record):  # SQLite's own SQLITE_FULL: no page may be added
        pages = dbapi_connection.execute("PRAGMA page_count").fetchone()[0]
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages}")

    lib.engine.dispose()  # new connections get the limit
    with pytest.raises(LibraryError) as exc:
        lib.add_version("hamlet", make_prompt(seed=1, tokens=400))  # 400 x 32 floats: 50 KB more
    assert "the disk is full" in one_line(exc) and "nothing was changed" in str(exc.value)
    assert lib.get_persona("hamlet") == before
    lib.close()
    reopened = open_library(path)
    assert reopened.get_persona("hamlet") == before
    reopened.close()


def test_a_directory_is_not_a_library(tmp_path):
    with pytest.raises(LibraryError, match="is a directory"):
        open_library(tmp_path)
