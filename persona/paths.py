"""Where persona keeps its state: `PERSONA_HOME`, else the XDG data dir."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import time
from pathlib import Path


def data_dir() -> Path:
    """The data dir (created on first use, owner-only): `$PERSONA_HOME`, else `$XDG_DATA_HOME/persona`."""
    home = os.environ.get("PERSONA_HOME")
    if home:
        path = Path(home).expanduser()
    else:
        xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        path = Path(xdg).expanduser() / "persona"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def models_dir() -> Path:
    """Converted base models (safetensors) live here, one folder each."""
    path = data_dir() / "models"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def library_path() -> Path:
    """The default persona library file."""
    return data_dir() / "library.db"


# A temporary file or folder of ours older than this was left by a process killed mid-write: no write
# of persona's takes that long, so one that old is removed by the next write beside it.
STALE_AFTER_S = 3600.0
TEMP_SUFFIX = ".tmp"


def remove_stale(folder: Path, pattern: str, *, older_than: float = STALE_AFTER_S) -> None:
    """Remove what matches `pattern` (a glob of our own temporary names) in `folder` and was last
    changed more than `older_than` seconds ago; anything that cannot be removed is left."""
    cutoff = time.time() - older_than
    try:
        candidates = list(folder.glob(pattern))
    except OSError:
        return
    for candidate in candidates:
        try:
            if candidate.lstat().st_mtime >= cutoff:
                continue  # another process may be writing it right now
            if candidate.is_dir() and not candidate.is_symlink():
                shutil.rmtree(candidate, ignore_errors=True)
            else:
                candidate.unlink()
        except OSError:
            continue


def write_private_atomic(path: Path, data: bytes) -> Path:
    """Write `data` to `path` with mode 0600, atomically: a failed write leaves any old file intact.

    The bytes go to `.NAME.XXXXXXXX.tmp` beside it first; such a file left by a process killed
    mid-write is removed by a later write of the same file once it is stale.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, f".{glob.escape(path.name)}.*{TEMP_SUFFIX}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
