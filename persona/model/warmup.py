"""What a chat start prepares while `import torch` runs: the chat tokenizer and the int8 weight cache.

Importing torch takes about two seconds of one core here, most of a `persona reply` start, and
holds the GIL nearly all that time. Two parts of the start need no torch and can run outside the
GIL: loading the chat tokenizer (tokenizers parses tokenizer.json in Rust, 0.2-0.3 s, mostly
without the GIL) and reading the int8 cache (about 0.25 s), read here with one `preadv` call into
a buffer per tensor so that the GIL is released once for the whole read (a read per tensor gained
nothing: each time the thread wanted the GIL back it waited on the import). `persona reply` and
`persona chat` call `begin()` before anything imports torch, and a thread does both on the other
core. The loader takes what was prepared (`tokenizer()`, `cache_tensors()`) when it is for the
same directory and the same, unchanged file; otherwise it does the work itself, so the result
never depends on the thread. Nothing here raises: a failure only means nothing was prepared.
This module must not import torch.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona.model.files import WEIGHTS_FILE, file_identity, int8_cache_path, read_entries
from persona.model.location import ready_model_dir

LARGE = (
    1 << 20
)  # buffers of this many bytes and more are anonymous mappings (not zero-filled under the GIL)


class _Prepared:
    def __init__(self, directory: Path, cache: Path | None) -> None:
        self.directory = directory
        self.cache = cache
        self.tokenizer: Any = None
        self.tensors: list[tuple[str, str, list[int], Any]] | None = (
            None  # (name, dtype, shape, buffer)
        )
        self.identity: str | None = None  # the cache file's identity when it was read
        self.thread = threading.Thread(target=self._work, name="persona-warmup", daemon=True)

    def _work(self) -> None:
        if self.cache is not None:  # first: the loader needs the weights before the tokenizer
            with contextlib.suppress(Exception):
                self.identity, self.tensors = _read_cache(self.cache)
        with contextlib.suppress(Exception):
            from persona.model import chattokenizer

            self.tokenizer = chattokenizer.load(self.directory)


_prepared: _Prepared | None = None
_lock = threading.Lock()


def begin(model: str | os.PathLike[str] | None, *, precision: str, backend: str) -> None:
    """Start preparing the tokenizer (and, for the int8 PyTorch path, the weight cache) of the model
    chat will load with these options.

    Only for a model directory that is ready (see location.ready_model_dir): converting the default,
    and every error, is the loader's.
    """
    global _prepared
    with contextlib.suppress(Exception):
        directory = ready_model_dir(model)
        if directory is None:
            return
        weights = directory / WEIGHTS_FILE
        int8 = backend == "torch" and precision != "fp32" and hasattr(os, "preadv")
        cache = int8_cache_path(weights) if int8 and weights.is_file() else None
        with _lock:
            if _prepared is not None:
                return
            _prepared = _Prepared(
                directory, cache if cache is not None and cache.is_file() else None
            )
            _prepared.thread.start()


def tokenizer(directory: Path) -> Any | None:
    """The chat tokenizer prepared for `directory` (handed over once), or None."""
    prepared = _finished()
    if prepared is None:
        return None
    found, prepared.tokenizer = prepared.tokenizer, None
    return found if prepared.directory == Path(directory) else None


def cache_tensors(path: Path) -> list[tuple[str, str, list[int], Any]] | None:
    """The tensors of the int8 cache file `path`, read in advance, or None.

    None unless the file still has the identity (size, modification time) it had when it was read.
    Whatever was prepared is handed over or dropped by the first call, so it is never held longer.
    """
    prepared = _finished()
    if prepared is None:
        return None
    found, prepared.tensors = prepared.tensors, None
    if found is None or prepared.cache != Path(path):
        return None
    try:
        unchanged = file_identity(Path(path)) == prepared.identity
    except OSError:
        return None
    return found if unchanged else None


@dataclass(frozen=True)
class Held:
    """What a start prepared and the loader has not taken yet."""

    directory: Path  # the model directory it was prepared for
    cache: Path | None  # the int8 cache file it read; None where there was none to read
    tensors: bool  # the cache's tensors are read and held
    tokenizer: bool  # the chat tokenizer is loaded and held


def held() -> Held | None:
    """What is prepared and not handed over, once the preparing thread is done; None where
    nothing is held (no `begin`, a directory that was not ready, or `forget` since)."""
    prepared = _finished()
    if prepared is None:
        return None
    return Held(
        directory=prepared.directory,
        cache=prepared.cache,
        tensors=prepared.tensors is not None,
        tokenizer=prepared.tokenizer is not None,
    )


def _finished() -> _Prepared | None:
    prepared = _prepared
    if prepared is not None and prepared.thread.is_alive():
        prepared.thread.join()
    return prepared


def _read_cache(path: Path) -> tuple[str, list[tuple[str, str, list[int], Any]]]:
    """(identity, tensors) of a safetensors file: each tensor's bytes in a buffer of its own (each is
    freed on its own once unused), all filled by one `preadv` (the GIL released once)."""
    identity = file_identity(path)
    with path.open("rb") as handle:
        entries = list(read_entries(handle))
        buffers: list[Any] = [
            mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE) if size >= LARGE else bytearray(size)
            for *_, size in entries
        ]
        offset = position = entries[0][3] if entries else 0
        for _, _, _, start, size in entries:
            if start != position:
                raise ValueError("the tensors are not stored back to back")
            position += size
        _preadv_fully(
            handle.fileno(), [memoryview(buffer) for buffer in buffers if len(buffer)], offset
        )
    return identity, [
        (key, dtype, shape, buffer)
        for (key, dtype, shape, _, _), buffer in zip(entries, buffers, strict=True)
    ]


def _preadv_fully(fd: int, views: list[memoryview], offset: int) -> None:
    """Fill every view from the file at `offset` on; raises ValueError where the file ends first."""
    while views:
        done = os.preadv(fd, views[:1024], offset)  # at most IOV_MAX buffers a call
        if done == 0:
            raise ValueError("the file is shorter than its header says")
        offset += done
        while views and done >= len(views[0]):
            done -= len(views[0])
            views.pop(0)
        if done:
            views[0] = views[0][done:]


def forget() -> None:
    """Drop whatever was prepared, and allow a new `begin` (the loader once it is done; tests)."""
    global _prepared
    with _lock:
        prepared, _prepared = _prepared, None
    if prepared is not None and prepared.thread.is_alive():
        prepared.thread.join()
