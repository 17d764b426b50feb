"""`persona doctor` finds what is wrong with a library, says how to repair it, and backs up before repairing."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from persona.cli.main import main
from persona.doctor import check_library
from persona.library import open_library
from tests.library_helpers import make_prompt


def sql(path: Path, *statements: str) -> None:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA foreign_keys = OFF")
    for statement in statements:
        connection.execute(statement)
    connection.close()


def doctor(capsys: pytest.CaptureFixture[str], path: Path, *flags: str) -> tuple[int, str]:
    code = main(["doctor", "--library", str(path), *flags])
    return code, capsys.readouterr().out


def backups(path: Path) -> list[Path]:
    return sorted(
        p for p in path.parent.iterdir() if ".backup-" in p.name and not p.name.endswith("-wal")
    )


def test_a_healthy_library_is_reported_healthy_and_left_alone(capsys, library: Path) -> None:
    before = library.read_bytes()
    code, out = doctor(capsys, library)
    assert code == 0 and "healthy" in out
    assert library.read_bytes() == before and not backups(library)


def test_a_tensor_that_fails_its_checksum_is_named_then_removed_after_a_backup(
    capsys, library: Path
) -> None:
    sql(
        library,
        "UPDATE prompt_versions SET sha256 = 'bad' WHERE version = 2 AND persona_id = (SELECT id FROM personas WHERE name = 'hamlet')",
    )
    code, out = doctor(capsys, library)
    assert code == 1
    assert (
        "problem: version 2 of persona 'hamlet' does not match its checksum" in out
        and "persona doctor --repair" in out
    )
    code, out = doctor(capsys, library, "--repair")
    assert code == 0, out
    assert (
        "removed damaged version 2 of 'hamlet'" in out
        and "made version 1 of 'hamlet' active" in out
    )
    (backup,) = backups(library)
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    with sqlite3.connect(
        backup
    ) as old:  # the backup holds the library as it was, bad version included
        assert old.execute("SELECT count(*) FROM prompt_versions").fetchone()[0] == 3
    lib = open_library(library)
    assert [v.version for v in lib.get_persona("hamlet").versions] == [1]
    assert lib.get_prompt("hamlet").sha256 == make_prompt(seed=1).sha256
    lib.close()


def test_orphan_rows_and_a_missing_active_version_are_found_and_fixed(
    capsys, library: Path
) -> None:
    sql(
        library,
        "INSERT INTO prompt_tensors (version_id, data) VALUES (999, x'00')",
        "INSERT INTO messages (conversation_id, role, content, persona_name, persona_id, cut_short, created) "
        "VALUES (999, 'user', 'lost', NULL, NULL, 0, '2024-01-01')",
        "UPDATE personas SET active_version = 7 WHERE name = 'ophelia'",
    )
    findings = [f.problem for f in check_library(library)]
    assert "1 tensors of a prompt version that does not exist" in findings
    assert "1 messages of a conversation that does not exist" in findings
    assert "persona 'ophelia' has no usable active version" in findings
    code, out = doctor(capsys, library, "--repair")
    assert code == 0, out
    assert check_library(library) == []
    lib = open_library(library)
    assert lib.get_persona("ophelia").active_version == 1 and len(lib.get_messages(1)) == 3
    lib.close()


def test_a_damaged_file_is_backed_up_then_rebuilt_from_the_rows_that_read(
    capsys, library: Path
) -> None:
    data = bytearray(library.read_bytes())
    pages = len(data) // 4096
    data[(pages - 1) * 4096 + 8 : pages * 4096] = b"\xa5" * (4096 - 8)  # wreck the last page
    library.write_bytes(bytes(data))
    code, out = doctor(capsys, library)
    assert code == 1 and "problem: the database file is damaged" in out
    code, out = doctor(capsys, library, "--repair")
    (backup,) = backups(library)
    assert backup.read_bytes() == bytes(data)  # the damaged file is kept exactly as it was
    assert "rebuilt the database from" in out
    with sqlite3.connect(library) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    lib = open_library(library)  # whatever survived is a working library
    for info in lib.list_personas():
        lib.get_prompt(info.name)
    lib.close()
    assert check_library(library) == [] and code == 0


def test_an_older_schema_is_reported_and_migrated_by_repair(capsys, library: Path) -> None:
    from persona.library import migrate

    migrate.downgrade(library, 5.0, "0002_tags_and_cut_short")
    code, out = doctor(capsys, library)
    assert code == 1 and f"older than {migrate.HEAD_REVISION!r}" in out
    code, out = doctor(capsys, library, "--repair")
    assert code == 0 and check_library(library) == []


def test_a_damaged_file_of_an_older_schema_is_rebuilt_without_losing_rows(
    capsys, library: Path
) -> None:
    """0002 keeps tensors in prompt_versions (head moved them to prompt_tensors): a rebuild at head's
    schema would read none of them and then drop every persona as having no usable version."""
    from persona.library import migrate

    migrate.downgrade(library, 5.0, "0002_tags_and_cut_short")
    with sqlite3.connect(library) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (index_page,) = connection.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'ix_messages_persona_id'"
        ).fetchone()
    data = bytearray(library.read_bytes())
    data[(index_page - 1) * 4096 : index_page * 4096] = b"\xa5" * 4096  # wreck an index, not a row
    library.write_bytes(bytes(data))
    code, out = doctor(capsys, library)
    assert code == 1 and "problem: the database file is damaged" in out
    code, out = doctor(capsys, library, "--repair")
    assert code == 0 and "could not be read" not in out and "removed" not in out
    lib = open_library(library)
    try:
        assert [info.name for info in lib.list_personas()] == ["hamlet", "ophelia"]
        assert len(lib.get_persona("hamlet").versions) == 2
        assert lib.get_persona("hamlet").tags == ["tragic"]
        for name in ("hamlet", "ophelia"):
            lib.get_prompt(name)  # checksum-verified
        assert [(m.content, m.persona) for m in lib.get_messages(1)] == [
            ("my lord?", None),
            ("words, words, words", "hamlet"),
            ("O, woe is me", "ophelia"),
        ]
    finally:
        lib.close()
    assert check_library(library) == []


def test_what_persona_cannot_repair_is_said_in_one_line(capsys, tmp_path: Path) -> None:
    notes = tmp_path / "notes.db"
    notes.write_text("not a database")
    code, out = doctor(capsys, notes)
    assert code == 1 and "is not a SQLite database" in out
    assert main(["doctor", "--library", str(notes), "--repair"]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("persona: error: ")
        and err.count("\n") == 1
        and notes.read_text() == "not a database"
    )
    assert main(["doctor", "--library", str(tmp_path / "none.db")]) == 1
    assert "there is no library at" in capsys.readouterr().err
