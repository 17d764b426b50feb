"""Where persona keeps its state: `PERSONA_HOME`, else the XDG data dir."""

from __future__ import annotations

import os
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
