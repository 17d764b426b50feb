"""Atomic private writes: whole or not at all, owner-only, and no temporary files piling up after kills."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from persona.paths import STALE_AFTER_S, remove_stale, write_private_atomic

REPO = Path(__file__).resolve().parent.parent


def killed_while_writing(target: Path) -> None:
    """Run write_private_atomic in a child that is SIGKILLed after writing, before the rename."""
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from persona.paths import write_private_atomic\n"
        "os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
        "write_private_atomic(Path(sys.argv[1]), b'half' * 1000)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(target)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert result.returncode == -9


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_write_replaces_the_file_whole_and_owner_only(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "prompt.safetensors"
    write_private_atomic(target, b"old")
    write_private_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["prompt.safetensors"]


def test_temporary_files_of_killed_writes_do_not_pile_up(tmp_path: Path) -> None:
    target = tmp_path / "prompt.safetensors"
    write_private_atomic(target, b"kept")
    for _ in range(3):
        killed_while_writing(target)
    leftovers = sorted(tmp_path.glob(".prompt.safetensors.*"))
    assert len(leftovers) == 3 and target.read_bytes() == b"kept"  # the old file is intact
    write_private_atomic(target, b"next")
    assert all(path.exists() for path in leftovers)  # recent: another writer may still own them
    for path in leftovers:
        age(path, STALE_AFTER_S + 60)
    unrelated = tmp_path / ".prompt.safetensors.notes"  # not of our naming: never touched
    unrelated.write_text("mine")
    age(unrelated, STALE_AFTER_S + 60)
    write_private_atomic(target, b"last")
    assert target.read_bytes() == b"last"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".prompt.safetensors.notes",
        "prompt.safetensors",
    ]


def test_remove_stale_removes_old_folders_and_keeps_recent_ones(tmp_path: Path) -> None:
    old, recent = tmp_path / ".convert-old", tmp_path / ".convert-new"
    for folder in (old, recent):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x")
    age(old, STALE_AFTER_S + 60)
    remove_stale(tmp_path, ".convert-*")
    assert not old.exists() and recent.is_dir()
