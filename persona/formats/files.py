"""Shared helpers for reading and writing soft-prompt files safely."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from persona.errors import AlreadyExistsError, LibraryError, PromptFormatError

MAX_TENSOR_BYTES = (
    64 * 1024 * 1024
)  # (N, D) float32: 100 x 8192 is 3 MiB; anything near this is not a prompt
MAX_JSON_BYTES = 1024 * 1024
PICKLE_ADVICE = (
    "a Python pickle (torch.save, .pt or .bin), which persona never loads because it can run code; "
    "save the (N, D) tensor as safetensors (safetensors.torch.save_file) and import that"
)


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """Read a whole file, refusing it before reading when it is larger than `limit`."""
    try:
        size = path.stat().st_size
        if size > limit:
            raise PromptFormatError(
                f"{path}: {size} bytes is far too large for {what} (limit {limit})"
            )
        return path.read_bytes()
    except FileNotFoundError:
        raise PromptFormatError(f"{path}: no such file") from None
    except OSError as exc:
        raise PromptFormatError(f"{path}: cannot read ({exc.strerror})") from None


def refuse_existing(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise AlreadyExistsError(
            f"{path} already exists; choose another path or pass --force to overwrite it"
        )


@contextmanager
def writing_to(path: Path) -> Iterator[None]:
    """Turn a failed write (disk full, permissions) into one line; callers write atomically."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise LibraryError(
                f"cannot write {path}: the disk is full; free some space and try again"
            ) from None
        raise LibraryError(
            f"cannot write {path} ({exc.strerror or exc}); check the path and its permissions"
        ) from None
