"""The base of PersonaLibrary: one engine, read and write transactions, errors made readable."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from persona.library.dberrors import translated
from persona.library.engine import writer


class Store:
    def __init__(self, engine: Engine, path: Path, timeout: float) -> None:
        self.engine = engine
        self.path = path
        self.timeout = timeout
        self._writer = writer(engine)

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A read transaction: a consistent snapshot, never blocked by a writer (WAL)."""
        with (
            translated(self.path, self.timeout),
            Session(self.engine, expire_on_commit=False) as session,
            session.begin(),
        ):
            yield session

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """A write transaction: all or nothing; on any failure the library stays as it was."""
        with (
            translated(self.path, self.timeout),
            Session(self._writer, expire_on_commit=False) as session,
            session.begin(),
        ):
            yield session

    @staticmethod
    def sqlite(session: Session) -> sqlite3.Connection:
        """The sqlite3 connection under `session`, inside its transaction (for reader.py's SQL)."""
        connection = session.connection().connection.driver_connection
        assert isinstance(connection, sqlite3.Connection)  # the library is SQLite, nothing else
        return connection

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self):  # noqa: ANN204
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
