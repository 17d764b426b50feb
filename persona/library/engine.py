"""The SQLAlchemy engine for a library file: WAL, busy timeout, foreign keys, real transactions.

pysqlite's own transaction handling skips DDL and begins lazily; we turn it off and emit BEGIN
ourselves, so every operation (migrations included) is one SQLite transaction. Writers take the
write lock up front (BEGIN IMMEDIATE) so two writers queue on the busy timeout instead of failing
with "database is locked" halfway through.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event

WRITE_OPTION = "persona_write"


def make_engine(path: Path, timeout: float, *, foreign_keys: bool = True) -> Engine:
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": timeout})

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection, _record) -> None:  # noqa: ANN001
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (see "begin" below)
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")  # a training run can write while a chat reads
        cursor.execute(
            "PRAGMA synchronous = NORMAL"
        )  # safe with WAL: a crash loses no committed data
        cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection) -> None:  # noqa: ANN001
        write = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def writer(engine: Engine) -> Engine:
    """The same engine (same pool) whose transactions take the write lock at BEGIN."""
    return engine.execution_options(**{WRITE_OPTION: True})
