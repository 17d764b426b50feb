"""What a chat start prepares while `import torch` runs.

Importing torch takes about two seconds of one core here, most of a `persona reply` start. Two
other parts of the start need no torch and spend most of their time outside the GIL: loading the
chat tokenizer (tokenizers parses tokenizer.json in Rust) and reading the int8 weight cache (file
reads). `persona reply` and `persona chat` call `begin()` before anything imports torch; a thread
then does both on the other core. The loader takes what was prepared (`tokenizer()`,
`cache_tensors()`) where it is for the same directory and the same, unchanged file, and otherwise
does the work itself, so the result never depends on the thread. Nothing here raises: a failure
only means nothing was prepared. This module must not import torch.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
from pathlib import Path
from typing import Any

LARGE = 1 << 20  # tensors of this many bytes and more are read into an anonymous mapping (no zero-filling under the GIL)


class _Prepared:
    def __init__(self, directory: Path, cache: Path | None) -> None:
        self.directory = directory
        self.cache = cache
        self.tokenizer: Any = None
        self.tensors: list[tuple[str, str, list[int], Any]] | None = None  # (name, dtype, shape, buffer)
        self.identity: str | None = None  # the cache file's identity when it was read
        self.thread = threading.Thread(target=self._work, name="persona-warmup", daemon=True)

    def _work(self) -> None:
        from persona.model import chattokenizer

        with contextlib.suppress(Exception):
            self.tokenizer = chattokenizer.load(self.directory)
        if self.cache is not None:
            with contextlib.suppress(Exception):
                self.identity, self.tensors = _read_cache(self.cache)


_prepared: _Prepared | None = None
_lock = threading.Lock()


def begin(model: str | os.PathLike[str] | None, *, int8: bool) -> None:
    """Start preparing the tokenizer (and, for int8, the weight cache) of the model chat will load.

    Only for a model directory that is ready: the default's converted copy, or --model /
    $PERSONA_MODEL holding config.json. Converting the default, and every error, is the loader's.
    """
    global _prepared
    with contextlib.suppress(Exception):
        directory = _ready_directory(model)
        if directory is None:
            return
        cache = None
        if int8:
            from persona.model.fastload import WEIGHTS_FILE, int8_cache_path

            weights = directory / WEIGHTS_FILE
            cache = int8_cache_path(weights) if weights.is_file() else None
        with _lock:
            if _prepared is not None:
                return
            _prepared = _Prepared(directory, cache)
            _prepared.thread.start()


def tokenizer(directory: Path) -> Any | None:
    """The chat tokenizer prepared for `directory` (handed over once), or None."""
    prepared = _finished()
    if prepared is None or prepared.directory != Path(directory):
        return None
    found, prepared.tokenizer = prepared.tokenizer, None
    return found


def cache_tensors(path: Path) -> list[tuple[str, str, list[int], Any]] | None:
    """The tensors of the int8 cache file `path`, read in advance (handed over once), or None.

    None unless the file still has the identity (size, modification time) it had when it was read.
    """
    from persona.model.fastload import file_identity

    prepared = _finished()
    if prepared is None or prepared.cache is None or prepared.tensors is None or prepared.cache != Path(path):
        return None
    found, prepared.tensors = prepared.tensors, None
    try:
        unchanged = file_identity(Path(path)) == prepared.identity
    except OSError:
        return None
    return found if unchanged else None


def _finished() -> _Prepared | None:
    prepared = _prepared
    if prepared is not None and prepared.thread.is_alive():
        prepared.thread.join()
    return prepared


def _ready_directory(model: str | os.PathLike[str] | None) -> Path | None:
    from persona.model.loader import COMPLETE_MARKER, DEFAULT_MODEL_ID
    from persona.paths import models_dir

    chosen = model if model is not None else os.environ.get("PERSONA_MODEL") or None
    if chosen is None:
        directory = models_dir() / DEFAULT_MODEL_ID
        return directory if (directory / COMPLETE_MARKER).exists() else None
    directory = Path(chosen).expanduser()
    return directory if (directory / "config.json").is_file() else None


def _read_cache(path: Path) -> tuple[str, list[tuple[str, str, list[int], Any]]]:
    """(identity, tensors) of a safetensors file, each tensor's bytes in a buffer of its own (so each is
    freed on its own once unused), read with the GIL released."""
    from persona.model.fastload import file_identity, read_entries

    identity = file_identity(path)
    tensors = []
    with path.open("rb") as handle:
        for key, dtype, shape, offset, size in list(read_entries(handle)):
            buffer: Any = mmap.mmap(-1, size) if size >= LARGE else bytearray(size)
            handle.seek(offset)
            if size and handle.readinto(buffer) != size:
                raise ValueError(f"{key} is cut short")
            tensors.append((key, dtype, shape, buffer))
    return identity, tensors


def forget() -> None:
    """Drop whatever was prepared (tests; a command that ends up not loading the model)."""
    global _prepared
    with _lock:
        prepared, _prepared = _prepared, None
    if prepared is not None and prepared.thread.is_alive():
        prepared.thread.join()
