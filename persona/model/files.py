"""Facts about the files a model is read from: the weights file's name, its identity, the int8
cache's place, and the layout of a safetensors header. No torch, no other persona module but paths.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from persona.paths import models_dir

WEIGHTS_FILE = "model.safetensors"
INT8_CACHE_DIR = "int8-cache"  # in the models dir
INT8_CACHE_VERSION = "1"  # bump when Int8Linear's stored tensors change meaning
HEADER_LENGTH_BYTES = 8  # a safetensors file opens with its JSON header's length, little-endian u64
METADATA_KEY = "__metadata__"  # the header's entry of string metadata (not a tensor)


def file_identity(weights: Path) -> str:
    """A weights file's path, size and modification time: what the caches derived from it are keyed by
    (a changed file gets a new key). Raises OSError where the file cannot be read."""
    stat = weights.stat()
    return f"{weights.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def int8_cache_path(weights: Path) -> Path:
    """Where the int8 tensors quantized from `weights` are kept. Raises OSError as file_identity."""
    key = f"{file_identity(weights)}|{INT8_CACHE_VERSION}"
    name = hashlib.sha256(key.encode()).hexdigest()[:24] + ".safetensors"
    return models_dir() / INT8_CACHE_DIR / name


def header_length(data: bytes) -> int:
    """The header length a safetensors file's first bytes give. Raises struct.error if fewer than 8."""
    (length,) = struct.unpack("<Q", data[:HEADER_LENGTH_BYTES])
    return int(length)


def parse_header(data: bytes, *, limit: int | None = None) -> tuple[dict[str, Any], int]:
    """(header, offset of the tensor data) of a safetensors file held in `data`.

    Raises ValueError (or struct.error, for fewer than 8 bytes) where the header is cut, longer
    than `limit` bytes, or not a JSON object.
    """
    length = header_length(data)
    if length > len(data) - HEADER_LENGTH_BYTES or (limit is not None and length > limit):
        raise ValueError(f"header length {length} is out of bounds")
    header = json.loads(data[HEADER_LENGTH_BYTES : HEADER_LENGTH_BYTES + length])
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return header, HEADER_LENGTH_BYTES + length


def header_metadata(header: dict[str, Any]) -> dict[str, str]:
    """The string metadata of a parsed header (empty where there is none)."""
    metadata = header.get(METADATA_KEY) or {}
    if not isinstance(metadata, dict):
        raise ValueError("metadata is not a mapping")
    return {str(key): str(value) for key, value in metadata.items()}


def read_entries(handle: IO[bytes]) -> Iterator[tuple[str, str, list[int], int, int]]:
    """(name, dtype, shape, offset, size in bytes) of each tensor of an open safetensors file, in file order."""
    length = header_length(handle.read(HEADER_LENGTH_BYTES))
    header = json.loads(handle.read(length))
    entries = sorted(
        ((key, value) for key, value in header.items() if key != METADATA_KEY),
        key=lambda kv: kv[1]["data_offsets"][0],
    )
    for key, entry in entries:
        begin, end = entry["data_offsets"]
        yield (
            key,
            entry["dtype"],
            list(entry["shape"]),
            HEADER_LENGTH_BYTES + length + begin,
            end - begin,
        )
