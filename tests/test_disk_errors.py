"""A disk that fills up or a library that cannot be written: one line saying so, the library as it was.

The full disk is real where the tests may mount a small tmpfs (root, as in CI containers); otherwise
those tests skip and the monkeypatched ENOSPC tests still run.
"""

from __future__ import annotations

import errno
import hashlib
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from persona.cli.main import main
from persona.library import open_library
from tests.library_helpers import make_prompt


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs of our own."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({result.stderr.decode(errors='replace').strip()[:80]})"
        )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill the disk, leaving about `leave` bytes."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    if leave:
        with filler.open("r+b") as handle:
            handle.truncate(max(0, filler.stat().st_size - leave))
    return filler


def state(library: Path) -> tuple[list[tuple[str, int]], str]:
    connection = sqlite3.connect(library)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = connection.execute(
            "SELECT p.name, count(v.id) FROM personas p JOIN prompt_versions v ON v.persona_id = p.id GROUP BY p.name"
        ).fetchall()
        digest = hashlib.sha256(
            b"".join(
                row[0]
                for row in connection.execute("SELECT data FROM prompt_tensors ORDER BY version_id")
            )
        ).hexdigest()
    finally:
        connection.close()
    return sorted(rows), digest


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("persona: error: ") and err.count("\n") == 1, err
    return err


def library_with_hamlet(folder: Path) -> tuple[Path, tuple]:
    """A library in `folder` holding one persona, and its state to compare with later."""
    library = folder / "library.db"
    lib = open_library(library)
    lib.add_version("hamlet", make_prompt(0))
    lib.close()
    return library, state(library)


def lists_or_says_one_line(
    library: Path, capsys: pytest.CaptureFixture[str], phrase: str = ""
) -> None:
    """Reading a library on a full or read-only disk: the list, or one error line (naming `phrase`)."""
    assert main(["list", "--library", str(library)]) in (0, 1)
    out, err = capsys.readouterr()
    assert "hamlet" in out or (
        err.startswith("persona: error: ") and phrase in err and err.count("\n") == 1
    ), (out, err)


def test_an_import_onto_a_full_disk_says_so_and_changes_nothing(
    small_disk: Path, tmp_path: Path, capsys
) -> None:
    library, before = library_with_hamlet(small_disk)
    big = tmp_path / "big.safetensors"
    make_prompt(1, tokens=2000).save(big)  # 2000 x 32 floats: 256 KB that will not fit
    filler = fill(small_disk, leave=16 * 1024)
    assert main(["import", str(big), "--name", "ophelia", "--library", str(library)]) == 1
    assert "the disk is full" in one_error_line(capsys)
    lists_or_says_one_line(library, capsys, "the disk is full")
    filler.unlink()  # once there is room again: the library as it was, and the same command works
    assert state(library) == before
    assert main(["import", str(big), "--name", "ophelia", "--library", str(library)]) == 0
    assert dict(state(library)[0]) == {"hamlet": 1, "ophelia": 1}


def test_an_export_onto_a_full_disk_leaves_no_partial_file(
    small_disk: Path, capsys, isolated_home: Path
) -> None:
    lib = open_library()
    lib.add_version("hamlet", make_prompt(0, tokens=2000))
    lib.close()
    fill(small_disk, leave=8 * 1024)
    for fmt, name in (("persona", "h.safetensors"), ("kobold", "h.zip"), ("peft", "h-adapter")):
        assert main(["export", "hamlet", str(small_disk / name), "--format", fmt]) == 1
        assert "the disk is full" in one_error_line(capsys)
    assert sorted(p.name for p in small_disk.iterdir()) == [
        "filler"
    ]  # no temp files, no half adapter


def test_a_read_only_library_refuses_writes_in_one_line_and_still_lists(
    small_disk: Path, tmp_path: Path, capsys
) -> None:
    library, before = library_with_hamlet(small_disk)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    voice = tmp_path / "voice.safetensors"
    make_prompt(1).save(voice)
    for argv in (
        ["import", str(voice), "--name", "ophelia"],
        ["rename", "hamlet", "prince"],
        ["delete", "hamlet", "--yes"],
    ):
        assert main([argv[0], "--library", str(library), *argv[1:]]) == 1
        err = one_error_line(capsys)
        assert "read-only" in err or "cannot open" in err, err
    lists_or_says_one_line(library, capsys)
    subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    assert state(library) == before


def test_a_checkpoint_that_cannot_be_written_stops_training_in_one_line(
    tmp_path: Path, tiny_model_dir: Path, capsys, monkeypatch
) -> None:
    import persona.train.checkpoint as checkpoint

    def full(path: Path, data: bytes) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "write_private_atomic", full)
    log = tmp_path / "log.txt"
    log.write_text(
        "\n\n".join(
            f"ALICE: hi {i}\nBOB: hello there {i}\nALICE: how?\nBOB: fine, {i}" for i in range(12)
        )
    )
    argv = [
        "train",
        str(log),
        "--speaker",
        "bob",
        "--name",
        "bob",
        "--model",
        str(tiny_model_dir),
        "--virtual-tokens",
        "2",
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--quiet",
        "--style-sample",
        "none",
    ]
    assert main(argv) == 1
    assert "the disk is full" in one_error_line(capsys)
    lib = open_library()
    assert not lib.has_persona("bob")
    lib.close()
