"""KoboldAI soft-prompt zips: `tensor.npy` (N, D) float16/float32 and `meta.json`.

KoboldAI takes input-layer embeddings only: a deep persona has no KoboldAI form.

A zip from the internet is untrusted: nothing is extracted to disk, member names that climb out
(`../`, absolute paths) are refused, every member's size is bounded before and while reading, and
the array is read with `allow_pickle=False` after its header has been checked for object dtype.
"""

from __future__ import annotations

import io
import json
import lzma
import math
import zipfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import torch

from persona.errors import PromptFormatError, first_line
from persona.formats.files import (
    MAX_JSON_BYTES,
    MAX_TENSOR_BYTES,
    PICKLE_ADVICE,
    refuse_existing,
    writing_to,
)
from persona.model.fingerprint import Fingerprint
from persona.paths import write_private_atomic
from persona.prompt.softprompt import SoftPrompt

TENSOR_MEMBER = "tensor.npy"
META_MEMBER = "meta.json"
MAX_MEMBERS = 64
ALLOWED_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))
PERSONA_KEYS = ("persona_fingerprint", "persona_init", "persona_base_model")


def read_kobold_zip(path: Path) -> SoftPrompt:
    try:
        with zipfile.ZipFile(path) as archive:
            members = _checked_members(path, archive)
            if TENSOR_MEMBER not in members and any(name.endswith("data.pkl") for name in members):
                raise PromptFormatError(f"{path}: {PICKLE_ADVICE}")
            if TENSOR_MEMBER not in members:
                raise PromptFormatError(
                    f"{path}: no {TENSOR_MEMBER} in the zip (found {sorted(members)[:5]}); "
                    "a KoboldAI soft prompt holds tensor.npy and meta.json"
                )
            tensor_bytes = _read_member(path, archive, members[TENSOR_MEMBER], MAX_TENSOR_BYTES)
            meta_bytes = (
                _read_member(path, archive, members[META_MEMBER], MAX_JSON_BYTES)
                if META_MEMBER in members
                else b"{}"
            )
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        EOFError,
        NotImplementedError,
        zlib.error,
        lzma.LZMAError,
        UnicodeDecodeError,
        RuntimeError,
    ) as exc:  # RuntimeError: an encrypted member
        raise PromptFormatError(
            f"{path}: damaged or unsupported zip ({first_line(exc, 120)})"
        ) from None
    except OSError as exc:
        raise PromptFormatError(f"{path}: cannot read ({exc.strerror or exc})") from None
    array = _load_npy(path, tensor_bytes)  # (N, D)
    meta = _load_meta(path, meta_bytes)
    fingerprint = None
    if meta.get("persona_fingerprint"):
        fingerprint = Fingerprint.from_json(str(meta["persona_fingerprint"]))
    supported = meta.get("supported")
    return SoftPrompt(
        embeddings=torch.from_numpy(
            array.astype(np.float32)
        ),  # (N, D) float32; float16 widens exactly
        name=str(meta.get("name") or path.stem),
        description=str(meta.get("description") or ""),
        fingerprint=fingerprint,
        init=str(meta.get("persona_init") or "imported"),
        base_model=str(
            meta.get("persona_base_model")
            or (supported[0] if isinstance(supported, list) and supported else "")
        ),
    )


def write_kobold_zip(
    prompt: SoftPrompt, path: Path, *, force: bool = False, author: str = ""
) -> Path:
    """Export as a KoboldAI zip (float32, so the round trip is exact); file mode 0600."""
    if prompt.kind != "soft":
        raise PromptFormatError(
            f"{prompt.name!r} is a deep persona (keys and values at every layer), but a KoboldAI soft "
            "prompt holds input-layer embeddings only; export it with --format peft (a PREFIX_TUNING "
            "adapter) or --format persona"
        )
    refuse_existing(path, force)
    array = io.BytesIO()
    np.save(array, prompt.embeddings.numpy(), allow_pickle=False)  # (N, D) float32
    meta = {
        "name": prompt.name,
        "author": author,
        "supported": [prompt.base_model] if prompt.base_model else [],
        "description": prompt.description,
        "persona_init": prompt.init,
        "persona_base_model": prompt.base_model,
        "persona_fingerprint": prompt.fingerprint.to_json() if prompt.fingerprint else "",
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(TENSOR_MEMBER, array.getvalue())
        archive.writestr(META_MEMBER, json.dumps(meta, indent=2))
    with writing_to(path):
        write_private_atomic(path, buffer.getvalue())
    return path


def _checked_members(path: Path, archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise PromptFormatError(
            f"{path}: {len(infos)} members is not a soft-prompt zip (at most {MAX_MEMBERS})"
        )
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename
        posix, windows = PurePosixPath(name), PureWindowsPath(name)
        if (
            posix.is_absolute()
            or windows.is_absolute()
            or windows.drive
            or ".." in posix.parts
            or ".." in windows.parts
        ):
            raise PromptFormatError(
                f"{path}: zip member {name!r} points outside the archive; refusing this zip"
            )
        members[name] = info
    return members


def _read_member(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    if info.file_size > limit:
        raise PromptFormatError(
            f"{path}: member {info.filename!r} is {info.file_size} bytes, far too large (limit {limit})"
        )
    with archive.open(info) as handle:
        data = handle.read(limit + 1)  # the declared size can lie: never read more than the limit
    if len(data) > limit:
        raise PromptFormatError(
            f"{path}: member {info.filename!r} is larger than {limit} bytes; refusing it"
        )
    return data


def _load_npy(path: Path, data: bytes) -> np.ndarray:
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    except (ValueError, EOFError, SyntaxError, TypeError) as exc:
        raise PromptFormatError(
            f"{path}: {TENSOR_MEMBER} is not a valid .npy array ({exc})"
        ) from None
    if dtype.hasobject:
        raise PromptFormatError(
            f"{path}: {TENSOR_MEMBER} holds Python objects (object dtype); persona only reads float16/float32 arrays"
        )
    if dtype.newbyteorder("=") not in ALLOWED_DTYPES:
        raise PromptFormatError(
            f"{path}: {TENSOR_MEMBER} has dtype {dtype}; expected float16 or float32"
        )
    if len(shape) != 2:
        raise PromptFormatError(
            f"{path}: {TENSOR_MEMBER} has shape {shape}; expected (num_virtual_tokens, hidden_size)"
        )
    if (
        math.prod(shape) * dtype.itemsize != len(data) - stream.tell()
    ):  # numpy would allocate the claimed size first
        raise PromptFormatError(
            f"{path}: {TENSOR_MEMBER} claims shape {shape} but holds {len(data) - stream.tell()} bytes of data; the file is damaged"
        )
    stream.seek(0)
    try:
        array = np.load(stream, allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise PromptFormatError(f"{path}: {TENSOR_MEMBER} is damaged ({exc})") from None
    return np.ascontiguousarray(array.astype(array.dtype.newbyteorder("=")))


def _load_meta(path: Path, data: bytes) -> dict:
    try:
        meta = json.loads(data or b"{}")
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise PromptFormatError(
            f"{path}: {META_MEMBER} is not valid JSON ({str(exc)[:120]})"
        ) from None
    if not isinstance(meta, dict):
        raise PromptFormatError(f"{path}: {META_MEMBER} must be a JSON object")
    return meta
