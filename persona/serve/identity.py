"""Where the local socket lives, and what a server must match to answer `persona reply`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from persona.paths import data_dir, library_path

SOCKET_NAME = "serve.sock"


def socket_path() -> Path:
    """The owner-only Unix socket of `persona serve`, in the data dir."""
    return data_dir() / SOCKET_NAME


def identity(args: argparse.Namespace) -> dict[str, Any]:
    """What a server must match to answer for these arguments: model, precision, backend, device,
    GGUF file, and the library its personas come from."""
    model = args.model or os.environ.get("PERSONA_MODEL") or None
    return {
        "model": _absolute(model),
        "precision": args.precision,
        "backend": args.backend,
        "device": getattr(args, "device", "auto"),
        "gguf": _absolute(args.gguf),
        "library": _absolute(getattr(args, "library", None) or library_path()),
    }


def _absolute(path: str | os.PathLike[str] | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())
