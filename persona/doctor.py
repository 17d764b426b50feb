"""`persona doctor`: check a library file and say what is wrong and how to repair it.

Checks, in order: the file is a SQLite database; `PRAGMA integrity_check`; the schema revision;
every prompt version's tensor against its stored checksum; rows that point at nothing (orphans) and
personas left without a usable active version. `repair_library` first copies the library (and its
WAL) next to it, owner-only, then fixes what can be fixed: a damaged file is rebuilt from every row
that still reads, damaged versions and orphan rows are removed, active versions are pointed at a
version that exists. Nothing is changed without a backup.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from persona.errors import LibraryError
from persona.library import migrate

# (problem, SQL that finds the rows, SQL that removes or fixes them)
ORPHANS: tuple[tuple[str, str, str], ...] = (
    (
        "prompt versions of a persona that does not exist",
        "SELECT count(*) FROM prompt_versions WHERE persona_id NOT IN (SELECT id FROM personas)",
        "DELETE FROM prompt_versions WHERE persona_id NOT IN (SELECT id FROM personas)",
    ),
    (
        "tensors of a prompt version that does not exist",
        "SELECT count(*) FROM prompt_tensors WHERE version_id NOT IN (SELECT id FROM prompt_versions)",
        "DELETE FROM prompt_tensors WHERE version_id NOT IN (SELECT id FROM prompt_versions)",
    ),
    (
        "prompt versions without a tensor",
        "SELECT count(*) FROM prompt_versions WHERE id NOT IN (SELECT version_id FROM prompt_tensors)",
        "DELETE FROM prompt_versions WHERE id NOT IN (SELECT version_id FROM prompt_tensors)",
    ),
    (
        "tags of a persona that does not exist",
        "SELECT count(*) FROM persona_tags WHERE persona_id NOT IN (SELECT id FROM personas)",
        "DELETE FROM persona_tags WHERE persona_id NOT IN (SELECT id FROM personas)",
    ),
    (
        "messages of a conversation that does not exist",
        "SELECT count(*) FROM messages WHERE conversation_id NOT IN (SELECT id FROM conversations)",
        "DELETE FROM messages WHERE conversation_id NOT IN (SELECT id FROM conversations)",
    ),
    (
        "messages linked to a deleted persona (they keep its name)",
        "SELECT count(*) FROM messages WHERE persona_id IS NOT NULL AND persona_id NOT IN (SELECT id FROM personas)",
        "UPDATE messages SET persona_id = NULL WHERE persona_id IS NOT NULL AND persona_id NOT IN (SELECT id FROM personas)",
    ),
)
NO_ACTIVE = """SELECT p.name FROM personas p WHERE NOT EXISTS
    (SELECT 1 FROM prompt_versions v WHERE v.persona_id = p.id AND v.version = p.active_version)"""


@dataclass(frozen=True)
class Finding:
    problem: str  # what is wrong, in one line
    repair: str  # what `persona doctor --repair` (or the user) does about it
    repairable: bool = True


def check_library(path: Path) -> list[Finding]:
    """Every problem found in the library at `path` (an empty list: healthy). Never writes."""
    path = Path(path)
    if not path.is_file():
        raise LibraryError(f"there is no library at {path}; pass the file with --library")
    try:
        with path.open("rb") as handle:
            magic = handle.read(len(migrate.SQLITE_MAGIC))
    except OSError as exc:
        raise LibraryError(f"cannot read the library {path} ({exc.strerror})") from None
    if magic and magic != migrate.SQLITE_MAGIC:
        return [
            Finding(
                f"{path} is not a SQLite database",
                "move it away; persona starts a new library there",
                False,
            )
        ]
    connection = _connect(path)
    try:
        damage = _integrity(connection)
        if damage:
            return [
                Finding(
                    f"the database file is damaged ({damage})",
                    "rebuild it from every row that still reads (persona doctor --repair)",
                )
            ]
        findings = _schema(connection)
        if findings:
            return findings
        findings += _checksums(connection)
        for problem, count_sql, _ in ORPHANS:
            count = connection.execute(count_sql).fetchone()[0]
            if count:
                findings.append(
                    Finding(f"{count} {problem}", "remove them (persona doctor --repair)")
                )
        for (name,) in connection.execute(NO_ACTIVE).fetchall():
            findings.append(
                Finding(
                    f"persona {name!r} has no usable active version",
                    "make its newest good version active, or remove it if it has none (persona doctor --repair)",
                )
            )
        return findings
    except sqlite3.Error as exc:
        return [
            Finding(
                f"the database cannot be read ({exc})",
                "rebuild it from every row that still reads (persona doctor --repair)",
            )
        ]
    finally:
        connection.close()


def repair_library(path: Path) -> tuple[Path, list[str]]:
    """Back the library up, then repair it. Returns the backup's path and what was done."""
    path = Path(path)
    findings = check_library(path)
    if any(not f.repairable for f in findings):
        raise LibraryError(
            f"{path} cannot be repaired by persona: {findings[0].problem}; {findings[0].repair}"
        )
    backup = back_up(path)
    done: list[str] = []
    if any(
        f.problem.startswith(("the database file is damaged", "the database cannot be read"))
        for f in findings
    ):
        done.append(_rebuild(path))
    from persona.library.open import open_library

    open_library(path).close()  # brings an older schema to head
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        for persona, version, version_id in _damaged_versions(connection):
            connection.execute("DELETE FROM prompt_tensors WHERE version_id = ?", (version_id,))
            connection.execute("DELETE FROM prompt_versions WHERE id = ?", (version_id,))
            done.append(f"removed damaged version {version} of {persona!r}")
        for problem, count_sql, fix_sql in ORPHANS:
            count = connection.execute(count_sql).fetchone()[0]
            if count:
                connection.execute(fix_sql)
                done.append(f"fixed {count} {problem}")
        for (name,) in connection.execute(NO_ACTIVE).fetchall():
            done.append(_fix_active(connection, name))
        connection.execute("COMMIT")
    except sqlite3.Error as exc:
        connection.execute("ROLLBACK") if connection.in_transaction else None
        raise LibraryError(
            f"repairing {path} failed ({exc}); the backup {backup} holds the library as it was"
        ) from None
    finally:
        connection.close()
    return backup, done


def back_up(path: Path) -> Path:
    """Copy the library and its WAL to `NAME.backup-YYYYmmddTHHMMSS` (mode 0600) before any change."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    backup = path.with_name(f"{path.name}.backup-{stamp}")
    try:
        for suffix in ("", "-wal"):
            source = Path(f"{path}{suffix}")
            if source.exists():
                target = Path(f"{backup}{suffix}")
                shutil.copyfile(source, target)
                os.chmod(target, 0o600)
    except OSError as exc:
        raise LibraryError(
            f"cannot back up {path} before repairing it ({exc.strerror}); nothing was changed"
        ) from None
    return backup


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)


def _integrity(connection: sqlite3.Connection) -> str:
    try:
        rows = [row[0] for row in connection.execute("PRAGMA integrity_check(5)")]
    except sqlite3.DatabaseError as exc:
        return str(exc)
    return "" if rows == ["ok"] else "; ".join(rows)[:200]


def _schema(connection: sqlite3.Connection) -> list[Finding]:
    tables = {
        row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    if "alembic_version" not in tables:
        if tables - {"sqlite_sequence"}:
            return [
                Finding(
                    "a SQLite database but not a persona library",
                    "pass another --library path",
                    False,
                )
            ]
        return [
            Finding(
                "an empty library with no schema yet",
                "create the schema (persona doctor --repair, or any persona command)",
            )
        ]
    revisions = [row[0] for row in connection.execute("SELECT version_num FROM alembic_version")]
    if len(revisions) != 1 or revisions[0] not in migrate.KNOWN_REVISIONS:
        if len(revisions) == 1 and revisions[0] > migrate.HEAD_REVISION:
            return [
                Finding(
                    f"schema {revisions[0]!r} is from a newer persona",
                    "upgrade persona to open it",
                    False,
                )
            ]
        return [
            Finding(
                f"the schema record is damaged ({revisions!r})",
                "restore the library from a backup",
                False,
            )
        ]
    if revisions[0] != migrate.HEAD_REVISION:
        return [
            Finding(
                f"schema {revisions[0]!r} is older than {migrate.HEAD_REVISION!r}",
                "migrate it (persona doctor --repair, or any persona command)",
            )
        ]
    return []


def _damaged_versions(connection: sqlite3.Connection) -> list[tuple[str, int, int]]:
    """(persona, version, version row id) of every version whose tensor does not read or match its checksum."""
    from persona.prompt.softprompt import SoftPrompt

    damaged = []
    rows = connection.execute(
        """SELECT p.name, v.version, v.id, v.sha256, t.data FROM prompt_versions v
           JOIN personas p ON p.id = v.persona_id JOIN prompt_tensors t ON t.version_id = v.id ORDER BY p.name, v.version"""
    )
    for name, version, version_id, sha256, data in rows:
        try:
            good = SoftPrompt.from_bytes(bytes(data)).sha256 == sha256
        except Exception:  # noqa: BLE001 - any unreadable tensor is damage
            good = False
        if not good:
            damaged.append((name, version, version_id))
    return damaged


def _checksums(connection: sqlite3.Connection) -> list[Finding]:
    return [
        Finding(
            f"version {version} of persona {name!r} does not match its checksum",
            "remove that version; the persona keeps its other versions (persona doctor --repair)",
        )
        for name, version, _ in _damaged_versions(connection)
    ]


def _fix_active(connection: sqlite3.Connection, name: str) -> str:
    persona_id = connection.execute("SELECT id FROM personas WHERE name = ?", (name,)).fetchone()[0]
    newest = connection.execute(
        "SELECT max(version) FROM prompt_versions WHERE persona_id = ?", (persona_id,)
    ).fetchone()[0]
    if newest is None:
        connection.execute("DELETE FROM persona_tags WHERE persona_id = ?", (persona_id,))
        connection.execute(
            "UPDATE messages SET persona_id = NULL WHERE persona_id = ?", (persona_id,)
        )
        connection.execute("DELETE FROM personas WHERE id = ?", (persona_id,))
        return f"removed persona {name!r}: none of its versions was usable (its messages keep its name)"
    connection.execute("UPDATE personas SET active_version = ? WHERE id = ?", (newest, persona_id))
    return f"made version {newest} of {name!r} active"


def _rebuild(path: Path) -> str:
    """Copy every row that still reads into a fresh library of the same schema revision, then put it
    in place of the damaged file (the caller then migrates it to head, as any older library).

    The fresh file has the damaged one's revision, not head's, so that rows of an older schema keep
    every column (a table head moved or split would otherwise be read with columns it lacks and its
    rows dropped).
    """
    fresh = path.with_name(f".{path.name}.rebuilding")
    for leftover in (fresh, Path(f"{fresh}-wal"), Path(f"{fresh}-shm")):
        leftover.unlink(missing_ok=True)
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        revision = _revision(source)
        migrate.ensure_file(fresh)
        migrate.upgrade(fresh, 10.0, revision)  # the tables only: the rows are the damaged file's
        target = sqlite3.connect(fresh, isolation_level=None)
        saved = lost = 0
        try:
            target.execute("PRAGMA foreign_keys = OFF")
            target.execute("BEGIN")
            for table in _tables(target):
                rows_saved, rows_lost = _copy_rows(source, target, table)
                saved, lost = saved + rows_saved, lost + rows_lost
            target.execute("COMMIT")
        finally:
            target.close()
    finally:
        source.close()
    os.chmod(fresh, 0o600)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    os.replace(fresh, path)
    return f"rebuilt the database from {saved} readable rows" + (
        f" ({lost} could not be read)" if lost else ""
    )


def _revision(connection: sqlite3.Connection) -> str:
    """The schema revision a damaged file records; head where it cannot be read."""
    try:
        rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.DatabaseError:
        return migrate.HEAD_REVISION
    if len(rows) == 1 and rows[0][0] in migrate.KNOWN_REVISIONS:
        return str(rows[0][0])
    return migrate.HEAD_REVISION


def _tables(connection: sqlite3.Connection) -> list[str]:
    """The library's own tables (not Alembic's record, not SQLite's)."""
    return [
        row[0]
        for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY rootpage"
        )
        if row[0] != "alembic_version" and not row[0].startswith("sqlite_")
    ]


def _columns(connection: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in connection.execute(f"PRAGMA table_info({table})")]


def _copy_rows(
    source: sqlite3.Connection, target: sqlite3.Connection, table: str
) -> tuple[int, int]:
    """Copy the rows of `table` that read, one at a time; (rows saved, rows lost)."""
    try:
        columns = _columns(target, table)
        have = set(_columns(source, table))
        columns = [column for column in columns if column in have] or columns
        # NOT INDEXED: walk the table itself; a damaged index must not hide rows that still read
        rowids = [row[0] for row in source.execute(f"SELECT rowid FROM {table} NOT INDEXED")]
    except sqlite3.DatabaseError:
        return 0, 1
    names = ", ".join(columns)
    marks = ", ".join("?" for _ in columns)
    saved = lost = 0
    for rowid in rowids:
        try:
            row = source.execute(
                f"SELECT {names} FROM {table} NOT INDEXED WHERE rowid = ?", (rowid,)
            ).fetchone()
            target.execute(f"INSERT OR IGNORE INTO {table} ({names}) VALUES ({marks})", row)
            saved += 1
        except sqlite3.DatabaseError:
            lost += 1
    return saved, lost
